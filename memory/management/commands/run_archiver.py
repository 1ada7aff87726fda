"""`make run` starts this: the memory archiver in the foreground (memory.archiver)."""

import signal
import socket
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from memory.archiver import AOF_CHECK_EVERY_S, Archiver
from memory.events import AofDisabled, redis_aof_ensure


class Command(BaseCommand):
    help = "Archive memory events from the Redis stream into Postgres until stopped (SIGTERM or Ctrl-C)."
    # A worker process restarted by its supervisor: Django's system checks (URL config, every
    # view module) only delay the moment it resumes archiving.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name",
            default=f"{socket.gethostname()}-1",
            help="Consumer name; keep it stable across restarts so a restarted archiver finishes "
            "what it had read (default: HOST-1).",
        )

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        redis = Redis.from_url(settings.REDIS_URL, socket_timeout=10, health_check_interval=30)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        aof = self._aof_checked(redis, stop)
        if stop.is_set():
            return
        archiver = Archiver(redis=redis, consumer=name, aof_check_every_s=AOF_CHECK_EVERY_S)
        self.stdout.write(f"archiver {name}: {settings.MEMORY_STREAM} → Postgres (Redis AOF {aof})")
        self.stdout.flush()
        archiver.run(stop)
        stats = archiver.stats
        self.stdout.write(
            f"archiver {name} stopped: {stats.archived} archived, {stats.duplicates} duplicates, "
            f"{stats.dead_lettered} dead-lettered, {stats.outages} outages"
        )

    def _aof_checked(self, redis: Redis, stop: threading.Event) -> str:
        """Redis's AOF setting, waiting for Redis when it does not answer yet (an archiver
        started with the stack, or restarted by a supervisor while Redis restarts)."""
        backoff = 0.1
        while True:
            try:
                return redis_aof_ensure(redis)
            except AofDisabled as exc:
                raise CommandError(str(exc)) from exc
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self.stderr.write(f"archiver: Redis does not answer ({exc}); retrying in {backoff:.1f} s")
                if stop.wait(backoff):
                    return "unknown"
                backoff = min(backoff * 2, 5.0)
