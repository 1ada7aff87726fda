from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.residency import AdapterLoadError, residency_sync


class Command(BaseCommand):
    help = (
        "Load every active adapter into its archetype's worker (after a sha256 check); unload retired ones."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = residency_sync(workers=settings.INFERENCE_WORKERS)
        except AdapterLoadError as exc:
            raise CommandError(str(exc)) from exc
        for url, name in report.loaded:
            self.stdout.write(f"loaded {name} on {url}")
        for url, name in report.unloaded:
            self.stdout.write(f"unloaded {name} from {url}")
        for url in report.unhealthy:
            self.stderr.write(f"worker {url} is not healthy; its adapters wait for it")
        for message in report.refused:
            self.stderr.write(self.style.ERROR(f"refused: {message}"))
        if report.refused:
            raise CommandError(f"{len(report.refused)} adapter(s) refused; see above")
