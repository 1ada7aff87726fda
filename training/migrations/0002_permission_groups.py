from django.db import migrations

from console.permissions import groups_sync


class Migration(migrations.Migration):
    """Grant training's permissions to the designers and ops groups."""

    dependencies = [
        ("training", "0001_initial"),
        ("memory", "0003_publish_fact_permission"),
        ("console", "0005_lore"),
    ]

    operations = [migrations.RunPython(groups_sync, migrations.RunPython.noop)]
