from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Archetypes learn: datasets, LoRA training jobs, evaluation and adapter promotion."""

    name = "training"
    verbose_name = "Training"
    default_auto_field = "django.db.models.BigAutoField"
