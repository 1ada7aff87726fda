from django.db import migrations

from console.permissions import groups_sync


class Migration(migrations.Migration):
    """Grant the memory archive's permissions to the designers and ops groups."""

    dependencies = [
        ("memory", "0001_initial"),
        ("console", "0003_npc_playtest_permission"),
    ]

    operations = [migrations.RunPython(groups_sync, migrations.RunPython.noop)]
