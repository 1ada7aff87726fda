"""`python manage.py ingest PATH --world SLUG`: lore files (a folder or one file) into a world."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.jobs.models import JobStatus
from console.lore.ingest import ingest_job_create, ingest_job_run, ingest_job_start
from console.models import World


class Command(BaseCommand):
    help = (
        "Ingest lore (.md/.txt files of a folder, or one file) into a world: chunks, embeddings, "
        "versions. Unchanged files are skipped; every file is checked before anything is written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--world", required=True, help="the world's slug, e.g. ravenmoor")
        parser.add_argument(
            "--queue", action="store_true", help="hand the job to a Celery worker instead of running it here"
        )

    def handle(self, *args: Any, path: Path, world: str, queue: bool, **options: Any) -> None:
        from tqdm import tqdm

        try:
            target = World.objects.get(slug=world)
        except World.DoesNotExist:
            known = ", ".join(World.objects.values_list("slug", flat=True)) or "none yet (run seed_demo)"
            raise CommandError(f"no world {world!r}; worlds: {known}") from None
        if queue:
            job = ingest_job_start(world=target, source=str(path.resolve()))
            self.stdout.write(f"ingest job {job.pk} queued; see it in the admin (Ingest jobs)")
            return
        job = ingest_job_create(world=target, source=str(path.resolve()))
        with tqdm(total=100, unit="%", desc=f"ingest {path.name}", disable=None) as bar:

            def progress(done: int, total: int) -> None:
                bar.n = round(100 * done / total)
                bar.refresh()

            ingest_job_run(job, on_progress=progress)
        if job.status == JobStatus.FAILED:
            raise CommandError(f"ingest job {job.pk} failed: {job.error}")
        self.stdout.write(
            f"ingest job {job.pk}: {job.documents_written} documents written, {job.documents_skipped} "
            f"unchanged, {job.chunks_written} chunks"
        )
