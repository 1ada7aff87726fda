from django.apps import AppConfig


class MemoryConfig(AppConfig):
    """NPC memory: the hot and warm tiers, the event stream and the lifetime archive."""

    name = "memory"
    verbose_name = "NPC memory"
    default_auto_field = "django.db.models.BigAutoField"
