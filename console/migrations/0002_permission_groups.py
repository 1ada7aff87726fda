from django.db import migrations

from console.permissions import groups_sync


class Migration(migrations.Migration):
    """Create the `designers` and `ops` groups with their permissions."""

    dependencies = [
        ("console", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_celery_results", "0014_alter_taskresult_status"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(groups_sync, migrations.RunPython.noop)]
