from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference.base_models import BaseModelError, base_model_bootstrap


class Command(BaseCommand):
    help = (
        "Prepare the base model: convert the bundled SmolLM2-135M-Instruct GGUF into var/models/ "
        "(or use BASE_MODEL_PATH) and register it. Idempotent: checksums decide whether to convert again."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            base_model = base_model_bootstrap()
        except BaseModelError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Base model {base_model.name}: {base_model.parameter_count:,} parameters, "
                f"{base_model.dtype}, context {base_model.context_length}, at {base_model.path}"
            )
        )
