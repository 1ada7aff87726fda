"""`make worker`: one vLLM worker in the foreground (vLLM's own server, configured for Revenant)."""

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.base_models import BaseModelError, base_model_bootstrap
from inference.workers import worker_argv, worker_env


class Command(BaseCommand):
    help = "Start a vLLM worker for the base model with run-time LoRA loading (replaces this process)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url", default=None, help="Address to serve on (default: first INFERENCE_WORKERS)."
        )

    def handle(self, *args: Any, url: str | None, **options: Any) -> None:
        if not settings.INFERENCE_API_KEY:
            # Without a key anyone who reaches the port can load adapters from any path.
            raise CommandError(
                "INFERENCE_API_KEY is not set: `make run` writes one into var/dev.env; elsewhere set it "
                "in the environment of the worker and of every process that talks to it."
            )
        try:
            base_model = base_model_bootstrap()
        except BaseModelError as exc:
            raise CommandError(str(exc)) from exc
        argv = worker_argv(
            model_path=base_model.path, served_name=base_model.name, url=url or settings.INFERENCE_WORKERS[0]
        )
        self.stdout.write(f"starting vLLM: {' '.join(argv[1:])}")
        self.stdout.flush()
        # exec: the worker becomes this process, so signals and exit codes are vLLM's own.
        os.execve(argv[0], argv, {**os.environ, **worker_env()})
