from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.services.demo import DemoFileError, demo_seed


class Command(BaseCommand):
    help = "Create the demo world Ravenmoor (idempotent; existing rows are kept unless --reset)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset", action="store_true", help="Overwrite demo rows with the file's content."
        )

    def handle(self, *args: Any, reset: bool, **options: Any) -> None:
        try:
            report = demo_seed(reset=reset)
        except DemoFileError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Ravenmoor seeded: {report.summary()}"))
