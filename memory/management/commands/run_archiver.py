"""`make run` starts this: the memory archiver in the foreground (memory.archiver)."""

import signal
import socket
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis import Redis

from memory.archiver import Archiver
from memory.events import AofDisabled, redis_aof_ensure


class Command(BaseCommand):
    help = "Archive memory events from the Redis stream into Postgres until stopped (SIGTERM or Ctrl-C)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name",
            default=f"{socket.gethostname()}-1",
            help="Consumer name; keep it stable across restarts so a restarted archiver finishes "
            "what it had read (default: HOST-1).",
        )

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        redis = Redis.from_url(settings.REDIS_URL, socket_timeout=10, health_check_interval=30)
        try:
            aof = redis_aof_ensure(redis)
        except AofDisabled as exc:
            raise CommandError(str(exc)) from exc
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        archiver = Archiver(redis=redis, consumer=name)
        self.stdout.write(f"archiver {name}: {settings.MEMORY_STREAM} → Postgres (Redis AOF {aof})")
        self.stdout.flush()
        archiver.run(stop)
        stats = archiver.stats
        self.stdout.write(
            f"archiver {name} stopped: {stats.archived} archived, {stats.duplicates} duplicates, "
            f"{stats.dead_lettered} dead-lettered, {stats.outages} outages"
        )
