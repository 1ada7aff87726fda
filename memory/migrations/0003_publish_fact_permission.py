from django.db import migrations

from console.permissions import groups_sync


class Migration(migrations.Migration):
    """The permission to mark a remembered fact as public, granted to designers."""

    dependencies = [("memory", "0002_permission_groups")]

    operations = [
        migrations.AlterModelOptions(
            name="memoryevent",
            options={
                "ordering": ["occurred_at", "id"],
                "permissions": [
                    ("publish_memoryevent", "Can mark remembered facts as known to every player")
                ],
                "verbose_name": "memory event",
            },
        ),
        migrations.RunPython(groups_sync, migrations.RunPython.noop),
    ]
