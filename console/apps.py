from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The domain app: the system of record that designers edit in the admin."""

    name = "console"
    verbose_name = "Revenant console"
    default_auto_field = "django.db.models.BigAutoField"
