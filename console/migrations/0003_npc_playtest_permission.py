from django.db import migrations

from console.permissions import groups_sync


class Migration(migrations.Migration):
    """The playtest permission, granted to designers and ops."""

    dependencies = [("console", "0002_permission_groups")]

    operations = [
        migrations.AlterModelOptions(
            name="npc",
            options={
                "ordering": ["name"],
                "permissions": [("playtest_npc", "Can chat with NPCs on the playtest page")],
                "verbose_name": "NPC",
                "verbose_name_plural": "NPCs",
            },
        ),
        migrations.RunPython(groups_sync, migrations.RunPython.noop),
    ]
