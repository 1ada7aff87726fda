"""Archive chaos: 20,000 memory events reach Postgres exactly once while the archiver
(`manage.py run_archiver`, as `make run` starts it) is SIGKILLed 30 times at random moments
and restarted, and the Redis holding the stream is SIGKILLed and restarted once.

The test runs its own redis-server (AOF on, fsync on every write, on a free loopback port), so
killing it touches nothing else. The producer emits through the same function the bridge uses
and retries a write Redis did not acknowledge (the bridge's turn write fails over the same
way), so some events reach the stream twice: the archive must still hold each once.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisError

from console.localstack import free_port, redis_ping
from console.processes import process_start, ready_wait
from memory.archiver import archive_backlog
from memory.events import MemoryEventRecord, memory_event_emit_sync
from memory.models import MemoryEvent
from tests.processes import process_log, subprocess_database_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EVENTS = 20_000
KILLS = 30


class OwnRedis:
    """A redis-server of the test's own, restartable on the same port and data directory."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: apt-get install -y redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(data_dir),
                     "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = process_start(argv=self.argv, log_path=process_log("chaos-redis"))
        # It answers only once the AOF is loaded.
        ready_wait(lambda: redis_ping(self.url), timeout_s=30, what="the test's redis-server", every_s=0.05,
                   process=self.process, log_path=process_log("chaos-redis"))  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class Producer(threading.Thread):
    """Emits EVENTS events at a steady pace, retrying each until Redis acknowledges it."""

    def __init__(self, url: str, *, pace_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.pace_s = url, pace_s
        self.acknowledged: list[str] = []
        self.retries = 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        started = time.monotonic()
        for index in range(EVENTS):
            record = MemoryEventRecord(
                kind="turn",
                npc=f"npc-{index % 7}",
                player=f"player-{index % 13}",
                session="s_chaos",
                data={"player": f"line {index}", "npc": f"reply {index}"},
            )
            while True:
                try:
                    memory_event_emit_sync(client, record)
                    break
                except RedisError:
                    self.retries += 1  # the same event_id again: a copy in the stream is harmless
                    time.sleep(0.05)
            self.acknowledged.append(record.event_id)
            # Keep events arriving through the whole run of kills, not all at its start.
            lag = started + index * self.pace_s - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        client.close()


def test_every_acknowledged_event_is_archived_exactly_once_through_kills_and_a_redis_restart(tmp_path):
    own_redis = OwnRedis(tmp_path)
    own_redis.start()
    env = {
        **subprocess_database_env(),
        "TEST_REDIS_URL": own_redis.url,  # the test settings read this one
        # Kills alternate between two consumer names, so entries a killed consumer left
        # pending are also claimed by the other one (after this idle time).
        "MEMORY_ARCHIVE_CLAIM_IDLE_MS": "1000",
    }
    argv = [sys.executable, "manage.py", "run_archiver"]
    chance = random.Random(20261121)  # noqa: S311 - test timing, not security
    producer = Producer(own_redis.url, pace_s=45.0 / EVENTS)
    producer.start()
    archived_at_kill: list[int] = []
    restarted = False
    try:
        for kill in range(KILLS):
            started = _archivers_started()
            archiver = process_start(
                argv=[*argv, "--name", f"chaos-{kill % 2}"], log_path=process_log("chaos-archiver"), env=env
            )
            # Once it says it archives (Django's start takes 1-3 s on a busy 2-core machine), a
            # kill at a random moment: a few land before it has read, most while it archives.
            wait_for(lambda: _archivers_started() > started, timeout_s=30, what="the archiver's start")  # noqa: B023
            time.sleep(chance.uniform(0.0, 1.5))
            # Redis restarts once, while the producer is still writing (a third of the way through,
            # whatever the machine's speed).
            if not restarted and len(producer.acknowledged) >= EVENTS // 3:
                restarted = True
                own_redis.kill()  # acknowledged writes are on disk (appendfsync always)
                time.sleep(chance.uniform(0.1, 1.0))
                own_redis.start()
            assert archiver.poll() is None, f"the archiver exited; see {process_log('chaos-archiver')}"
            archiver.send_signal(signal.SIGKILL)
            archiver.wait()
            archived_at_kill.append(MemoryEvent.objects.count())
        producer.join(timeout=120)
        assert not producer.is_alive(), "the producer did not finish"

        # One last archiver, left to finish; then stopped as an operator stops it (once it runs:
        # a SIGTERM during Django's start is not the shutdown under test).
        started = _archivers_started()
        archiver = process_start(
            argv=[*argv, "--name", "chaos-0"], log_path=process_log("chaos-archiver"), env=env
        )
        wait_for(lambda: _archivers_started() > started, timeout_s=30, what="the last archiver's start")
        client = redis.Redis.from_url(own_redis.url)
        deadline = time.monotonic() + 180
        while MemoryEvent.objects.count() < EVENTS or archive_backlog(client)["pending"]:
            assert archiver.poll() is None, f"the archiver exited; see {process_log('chaos-archiver')}"
            assert time.monotonic() < deadline, f"not caught up: {archive_backlog(client)}"
            time.sleep(0.5)
        archiver.terminate()
        assert archiver.wait(timeout=30) == 0
        backlog = archive_backlog(client)
        client.close()
    finally:
        own_redis.kill()

    stored = list(MemoryEvent.objects.values_list("event_id", flat=True))
    assert len(stored) == EVENTS  # no copy: event_id is unique, and no extra row
    assert set(stored) == set(producer.acknowledged)
    assert len(set(producer.acknowledged)) == EVENTS
    assert backlog["pending"] == 0
    assert backlog["dead_letter"] == 0
    assert producer.retries > 0  # the Redis restart really interrupted the producer
    # The kills really interrupted archiving: the archive grew between kills, not all at the end.
    grew = [after > before for before, after in zip(archived_at_kill, archived_at_kill[1:], strict=False)]
    assert sum(grew) >= 10


def _archivers_started() -> int:
    """How many archivers of this test have said they started (their first line)."""
    path = process_log("chaos-archiver")
    return path.read_text(errors="replace").count("→ Postgres") if path.exists() else 0
