"""`make run`: everything a designer needs, in the foreground, stopped by Ctrl-C."""

import sys
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bridge.server import daphne_argv
from console import localstack
from console.supervisor import ManagedProcess, Supervisor, supervisor_restart_record
from inference.tasks import residency_sync_task
from inference.workers import worker_health


def _http_ok(url: str) -> bool:
    try:
        with urlopen(url, timeout=5) as response:  # noqa: S310 - loopback URL built here
            return bool(response.status < 500)
    except OSError:
        return False


class Command(BaseCommand):
    help = "Start Redis (if needed), migrate, seed the demo, then Daphne, a Celery worker and beat."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        try:
            state = localstack.redis_ensure(settings.REDIS_URL)
        except localstack.LocalServiceError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Redis at {settings.REDIS_URL}: {state}.")
        self.stdout.write(
            f"PostgreSQL: {settings.DATABASES['default'].get('NAME')} ({self._database_kind()})."
        )
        if not localstack.port_is_free(host, port):
            raise CommandError(f"{host}:{port} is already in use: stop what runs there or pass --port.")

        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("seed_demo")
        # The demo world's lore (unchanged files are skipped: a second `make run` is quick).
        call_command("ingest", str(Path(settings.DEMO_DIR) / "lore"), world="ravenmoor")
        call_command("ensure_accounts", demo_staff=True)
        call_command("bootstrap_model")

        supervisor = Supervisor(
            log_dir=localstack.VAR_DIR / "log", cwd=localstack.PROJECT_DIR, on_restart=_restart_counted
        )
        python = sys.executable
        self.stdout.write(
            "Starting Daphne, Celery workers (io, training) and beat, the memory archiver (logs in var/log/)…"
        )
        try:
            web = supervisor.start("daphne", daphne_argv(host=host, port=port))
            # Threads, not prefork: the psycopg pool's worker threads do not survive a fork.
            supervisor.start(
                "celery-worker",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "console",
                    "worker",
                    "-Q",
                    "io,celery",
                    "--pool=threads",
                    "--concurrency=4",
                    "--loglevel=INFO",
                    "-n",
                    "io@%h",
                ],
            )
            # Training: one job at a time, torch in the worker's own process (training/tasks.py).
            supervisor.start(
                "celery-training",
                [python, "-m", "celery", "-A", "console", "worker", "-Q", "training", "--pool=solo",
                 "--loglevel=INFO", "-n", "training@%h"],
            )  # fmt: skip
            supervisor.start(
                "celery-beat", [python, "-m", "celery", "-A", "console", "beat", "--loglevel=INFO"]
            )
            # Memory events from the Redis stream into Postgres (memory.archiver).
            supervisor.start("archiver", [python, "manage.py", "run_archiver"])
            if settings.INFERENCE_START_WORKER:
                worker_url = settings.INFERENCE_WORKERS[0]
                self.stdout.write(f"Starting the vLLM worker at {worker_url} (30-90 s on CPU)…")
                # A restarted worker holds no adapters: once it answers again they are reloaded
                # (beat's minute sync and the bridge's up-again probe would also do it, later).
                worker = supervisor.start(
                    "vllm-worker",
                    [python, "manage.py", "run_worker", "--url", worker_url],
                    ready=lambda: worker_health(worker_url).healthy,
                    on_ready=_residency_sync_soon,
                )
                supervisor.wait_until(worker, lambda: worker_health(worker_url).healthy, timeout_s=300)
            call_command("adapters_sync")
            supervisor.wait_until(web, lambda: _http_ok(f"http://{host}:{port}/health/"), timeout_s=60)
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nRevenant is up: http://{host}:{port}/admin/  (health: /health/, metrics: /metrics)\n"
                    f"Logs: {supervisor.log_dir}/. Press Ctrl-C to stop everything."
                )
            )
            code = supervisor.run_forever()
        except RuntimeError as exc:
            code = 1
            self.stderr.write(str(exc))
        except KeyboardInterrupt:  # Ctrl-C before everything was ready
            code = 0
        finally:
            supervisor.stop_all()
            if localstack.embedded_postgres_started_here():
                localstack.embedded_postgres_stop()
                self.stdout.write("stopped the embedded PostgreSQL")
            if state == "started":
                localstack.redis_shutdown(settings.REDIS_URL)
                self.stdout.write("stopped the Redis server started for this run")
        if code:
            raise CommandError("a process kept failing at start; see the logs above")

    def _database_kind(self) -> str:
        return "embedded, var/pgdata" if not localstack.env_database_url() else "DATABASE_URL"


def _restart_counted(process: ManagedProcess) -> None:
    """The ops page shows restarts per child (console.selectors.ops_snapshot)."""
    supervisor_restart_record(redis_url=settings.REDIS_URL, name=process.name)


def _residency_sync_soon() -> None:
    """Queue a residency sync (the Celery io worker runs it); never stops the supervisor."""

    try:
        residency_sync_task.delay()
    except Exception as exc:  # noqa: BLE001 - beat's minute sync still comes
        print(f"could not queue a residency sync: {exc}", file=sys.stderr)
