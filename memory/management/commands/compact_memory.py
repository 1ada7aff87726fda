"""`python manage.py compact_memory`: the weekly compaction, now, in the foreground."""

from __future__ import annotations

import importlib
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inference.workers import workers_probe_now
from memory.compaction import memory_compact


def _tqdm_class() -> Any:
    """tqdm's progress bar when the environment has it (the inference extras bring it; the
    console does not depend on it), else None."""
    try:
        return importlib.import_module("tqdm").tqdm
    except ImportError:
        return None


class Command(BaseCommand):
    help = (
        "Summarise every archived session older than MEMORY_WARM_TTL_S that has no summary yet "
        "(what the weekly Celery task does); reruns write nothing twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-model",
            action="store_true",
            help="Write every summary from the lines, without asking the inference workers.",
        )
        parser.add_argument(
            "--batch-size", type=int, default=None, help="Sessions per batch (default MEMORY_COMPACT_BATCH)."
        )

    def handle(self, *args: Any, no_model: bool, batch_size: int | None, **options: Any) -> None:
        workers = [] if no_model else workers_probe_now()
        self.stdout.write(
            f"compacting with {len(workers)} inference worker(s)"
            + ("" if workers else ": summaries from the lines")
        )
        tqdm = _tqdm_class() if options["verbosity"] > 0 else None
        bar: Any = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if tqdm is None:
                if options["verbosity"] > 0:
                    self.stdout.write(f"{100 * done // total}% ({done} of {total} sessions)")
                return
            if bar is None:
                bar = tqdm(total=total, unit="session", desc="compact_memory")
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = memory_compact(workers=workers, batch_size=batch_size, on_progress=progress)
        finally:
            if bar is not None:
                bar.close()
        self.stdout.write(
            f"compacted {report.sessions} session(s): {report.summarised} summaries written "
            f"({report.by_model} by the model, {report.summarised - report.by_model} from the lines), "
            f"{report.skipped} skipped"
        )
