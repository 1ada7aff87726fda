"""The stack a websocket benchmark runs on: its own database, the demo world, a vLLM worker and
Daphne processes started as `make run` starts them. Shared by bench.bridge and bench.clients.

Call `django_setup()` before importing anything that reads settings.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DATABASE = "revenant_bench"
NOWHERE = "http://127.0.0.1:9"  # the discard port: no worker answers, every turn is a bark
PROMPTS = [
    "Who are you?",
    "What do you want from me?",
    "Tell me about this town.",
    "Is it safe to travel at night?",
    "Do you have any work for me?",
    "What happened to the old church?",
    "Why are the villagers afraid?",
    "Can I trust you?",
    "Where can I find the blacksmith?",
    "Have you seen any strangers lately?",
]


def django_setup(*, environ: dict[str, str] | None = None) -> None:
    """Settings and database before django.setup(); `environ` also reaches the Daphne processes.

    The bench runs on its own database (`revenant_bench` on the embedded PostgreSQL, or on
    DATABASE_URL's server) and the test settings' Redis database, never on the demo's data.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings.test")
    os.environ.update(environ or {})
    from console import localstack

    url = localstack.env_database_url()
    if url:
        base, _, query = url.partition("?")
        os.environ["DATABASE_URL"] = (
            base.rsplit("/", 1)[0] + f"/{BENCH_DATABASE}" + (f"?{query}" if query else "")
        )
    else:
        os.environ["DATABASE_URL"] = localstack.embedded_postgres_url(database=BENCH_DATABASE)
    import django

    django.setup()
    # Expected fallbacks (the demo has no trained adapters yet) and request logs would bury the figures.
    logging.disable(logging.WARNING)


def demo_world_ready() -> None:
    """Migrations, the demo world and the base model in the bench database."""
    from django.conf import settings
    from django.core.management import call_command

    from console import localstack

    localstack.redis_ensure(settings.REDIS_URL)
    print("migrating and seeding the bench database…", file=sys.stderr)
    # Their reports go to stderr: stdout is the bench's one JSON line.
    call_command("migrate", interactive=False, verbosity=0, stdout=sys.stderr)
    call_command("seed_demo", verbosity=0, stdout=sys.stderr)
    call_command("bootstrap_model", verbosity=0, stdout=sys.stderr)


@dataclass
class Stack:
    logs: Path
    worker_url: str = ""
    daphnes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def daphne_start(self, *, name: str, worker: str) -> str:
        """Daphne as `make run` starts it, on a free port, talking to `worker`; its ws:// URL."""
        from bridge.server import daphne_argv
        from console import localstack
        from console.processes import process_start, ready_wait

        port = localstack.free_port()
        log = self.logs / f"daphne-{name}.log"
        process = process_start(
            argv=daphne_argv(host="127.0.0.1", port=port),
            log_path=log,
            env={"TEST_INFERENCE_WORKER": worker},
            cwd=localstack.PROJECT_DIR,
        )
        self.daphnes.append(process)
        ready_wait(
            lambda: not localstack.port_is_free("127.0.0.1", port),
            timeout_s=60,
            what=f"Daphne {name} to listen",
            every_s=0.2,
            process=process,
            log_path=log,
        )
        return f"ws://127.0.0.1:{port}/ws/game/"


@contextmanager
def stack_running(*, worker: bool = True) -> Iterator[Stack]:
    """A vLLM worker on the base model with the adapters residency wants (when `worker`), and
    room for Daphne processes; everything is stopped on the way out."""
    from console.localstack import free_port
    from console.processes import processes_stop
    from inference.base_models import bundled_gguf_path, default_model_dir, gguf_convert
    from inference.residency import residency_sync
    from inference.workers import WorkerProcess

    stack = Stack(logs=Path(tempfile.mkdtemp(prefix="bench-")))
    process = None
    try:
        if worker:
            model_dir = gguf_convert(gguf_path=bundled_gguf_path(), target_dir=default_model_dir())
            process = WorkerProcess(
                url=f"http://127.0.0.1:{free_port()}",
                base_model_dir=model_dir,
                log_path=stack.logs / "worker.log",
            )
            print(f"starting the vLLM worker (logs in {stack.logs})…", file=sys.stderr)
            process.start()
            residency_sync(workers=[process.url])
            stack.worker_url = process.url
        yield stack
    finally:
        processes_stop(stack.daphnes, grace_s=20)
        if process is not None:
            process.stop()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def figures_print(figures: dict[str, Any]) -> None:
    print(json.dumps(figures))
