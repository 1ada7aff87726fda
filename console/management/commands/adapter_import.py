from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.models import AdapterTask, Archetype
from console.services.adapters import AdapterArtifactError, adapter_import
from inference.base_models import base_model_for


class Command(BaseCommand):
    help = "Register an existing PEFT LoRA adapter folder for an archetype's task (sha256 recorded)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--archetype", required=True)
        parser.add_argument("--task", required=True, choices=AdapterTask.values)
        parser.add_argument(
            "--activate", action="store_true", help="Make it the active adapter (retires the old)."
        )

    def handle(
        self, *args: Any, path: Path, archetype: str, task: str, activate: bool, **options: Any
    ) -> None:
        target = Archetype.objects.filter(slug=archetype).first()
        if target is None:
            raise CommandError(f"no archetype {archetype!r}: see the Archetypes page or seed_demo")
        base_model = base_model_for(target)
        if base_model is None:
            raise CommandError("no base model registered: run `python manage.py bootstrap_model` first")
        try:
            adapter = adapter_import(
                path=path, archetype=target, task=task, base_model=base_model, activate=activate
            )
        except AdapterArtifactError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Registered {adapter} (sha256 {adapter.sha256[:12]}…)"))
