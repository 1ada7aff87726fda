"""The archiver against the real Redis (test database) and Postgres: batches, idempotence,
poison events, dead consumers, trimming, and the event Redis's AOF."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import uuid

import pytest
import redis
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from console.localstack import free_port
from console.processes import process_start, ready_wait
from memory.archiver import GROUP, Archiver, archive_backlog
from memory.events import ENTRY_FIELD, MemoryEventRecord, memory_event_emit_sync, redis_aof_ensure
from memory.models import MemoryEvent

pytestmark = pytest.mark.django_db


def _record(index: int, **changes) -> MemoryEventRecord:
    values = {
        "kind": "turn",
        "npc": "count-valerian",
        "player": f"player-{index % 3}",
        "data": {"player": f"line {index}", "npc": f"reply {index}"},
        "session": "s_test",
        **changes,
    }
    return MemoryEventRecord(**values)


def test_every_event_is_archived_once_in_batches_and_the_stream_is_trimmed(redis_client):
    records = [_record(index) for index in range(250)]
    for record in records:
        memory_event_emit_sync(redis_client, record)
    archiver = Archiver(redis=redis_client, consumer="test-1", batch=100, block_ms=10)
    archiver.group_ensure()

    archiver.drain(max_steps=50)
    archiver._trimmed_at = 0
    archiver.step()

    stored = list(MemoryEvent.objects.order_by("occurred_at").values_list("event_id", flat=True))
    assert stored == [record.event_id for record in records]
    assert archiver.stats.batches == 3
    assert archiver.stats.archived == 250
    assert archive_backlog(redis_client) == {"stream": 0, "pending": 0, "dead_letter": 0}
    first = MemoryEvent.objects.get(event_id=records[0].event_id)
    assert first.payload == {"player": "line 0", "npc": "reply 0"}
    assert (first.kind, first.npc_slug, first.player_id) == ("turn", "count-valerian", "player-0")


def test_a_redelivered_event_is_stored_once(redis_client):
    record = _record(1)
    memory_event_emit_sync(redis_client, record)
    memory_event_emit_sync(redis_client, record)  # the producer retried after a timeout
    archiver = Archiver(redis=redis_client, consumer="test-1", block_ms=10)
    archiver.group_ensure()

    archiver.drain(max_steps=50)

    assert MemoryEvent.objects.filter(event_id=record.event_id).count() == 1
    assert (archiver.stats.archived, archiver.stats.duplicates) == (1, 1)


def test_poison_events_go_to_the_dead_letter_stream_at_once_and_the_rest_is_archived(redis_client):
    good = [_record(index) for index in range(3)]
    memory_event_emit_sync(redis_client, good[0])
    redis_client.xadd(settings.MEMORY_STREAM, {ENTRY_FIELD: "{not json"})
    memory_event_emit_sync(redis_client, good[1])
    # JSON that Postgres's jsonb refuses (a NUL character): only the insert can tell, and it
    # refuses it the same way every time, so there is nothing to retry.
    memory_event_emit_sync(redis_client, _record(9, data={"text": "bad\u0000byte"}))
    # Control characters in an id (a terminal escape, a bidi override): never a player's id.
    memory_event_emit_sync(redis_client, _record(10, player="\x1b[2Jeve"))
    memory_event_emit_sync(redis_client, _record(11, npc="count\u202evalerian"))
    memory_event_emit_sync(redis_client, good[2])
    archiver = Archiver(redis=redis_client, consumer="test-1", block_ms=10, claim_idle_ms=60_000)
    archiver.group_ensure()

    archiver.step()  # one batch, one delivery: no retries

    assert set(MemoryEvent.objects.values_list("event_id", flat=True)) == {r.event_id for r in good}
    dead = redis_client.xrange(settings.MEMORY_STREAM + ":dead")
    reasons = sorted(fields[b"reason"].decode() for _, fields in dead)
    assert len(reasons) == 4
    assert reasons[0].startswith("not a memory event")
    assert reasons[1].startswith("npc holds a control character")
    assert reasons[2].startswith("player holds a control character")
    assert reasons[3].startswith("refused by Postgres")
    assert "\\u0000" in reasons[3] or "NUL" in reasons[3] or "0x00" in reasons[3]
    assert all(fields[b"stream_id"] and fields[b"event"] for _, fields in dead[1:])
    assert archive_backlog(redis_client)["pending"] == 0
    assert archiver.stats.dead_lettered == 4


def test_claiming_runs_on_a_timer_while_reads_keep_returning_entries(redis_client):
    stuck = [_record(index) for index in range(5)]
    for record in stuck:
        memory_event_emit_sync(redis_client, record)
    archiver = Archiver(redis=redis_client, consumer="alive", batch=10, block_ms=10, claim_idle_ms=0)
    archiver.group_ensure()
    # A consumer read them and died before acknowledging.
    redis_client.xreadgroup(GROUP, "dead", {settings.MEMORY_STREAM: ">"}, count=10)
    archiver._own_pending = False

    # Steady traffic: every read comes back with new entries.
    for step in range(6):
        for index in range(3):
            memory_event_emit_sync(redis_client, _record(100 + step * 3 + index))
        archiver._claimed_at = 0  # the claim timer is due on every step
        assert archiver.step() >= 3
    assert MemoryEvent.objects.filter(event_id__in=[r.event_id for r in stuck]).count() == 5
    memory_event_emit_sync(redis_client, _record(200))
    archiver._trimmed_at = 0  # the trim passes what was pending
    assert archiver.step() == 1

    assert archive_backlog(redis_client) == {"stream": 0, "pending": 0, "dead_letter": 0}


def test_the_dead_letter_stream_is_capped(redis_client):
    for index in range(600):
        redis_client.xadd(settings.MEMORY_STREAM, {ENTRY_FIELD: f"not an event {index}"})
    archiver = Archiver(redis=redis_client, consumer="test-1", batch=600, block_ms=10, dead_letter_maxlen=50)
    archiver.group_ensure()

    archiver.step()

    assert archiver.stats.dead_lettered == 600
    # Approximate trimming (MAXLEN ~) drops whole stream nodes of up to 100 entries.
    assert redis_client.xlen(settings.MEMORY_STREAM + ":dead") <= 150
    assert archive_backlog(redis_client)["pending"] == 0


def _redis_server(tmp_path, config: str) -> tuple[subprocess.Popen, redis.Redis]:
    port = free_port()
    conf = tmp_path / "redis.conf"
    if not conf.exists():
        conf.write_text(config)
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: apt-get install -y redis-server"
    return _redis_started(tmp_path, [binary, str(conf), "--port", str(port), "--bind", "127.0.0.1",
                                     "--dir", str(tmp_path)], port=port)  # fmt: skip


def _redis_started(tmp_path, argv: list[str], *, port: int) -> tuple[subprocess.Popen, redis.Redis]:
    log = tmp_path / "redis-server.log"
    process = process_start(argv=argv, log_path=log)
    client = redis.Redis(port=port, socket_timeout=5)
    ready_wait(lambda: _answers(client), timeout_s=10, what="the test's redis-server", every_s=0.05,
               process=process, log_path=log)  # fmt: skip
    return process, client


def _stop(process: subprocess.Popen, client: redis.Redis) -> None:
    # Redis ignores SIGTERM while it writes the first AOF ("Writing initial AOF, can't exit").
    deadline = time.monotonic() + 10
    while _aof_rewriting(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.terminate()
    process.wait(timeout=10)


def test_aof_turned_on_at_run_time_survives_a_restart_of_a_redis_with_a_config_file(tmp_path):
    process, client = _redis_server(tmp_path, 'appendonly no\nsave ""\n')
    try:
        assert redis_aof_ensure(client) == "turned on"
    finally:
        _stop(process, client)
    process, client = _redis_server(tmp_path, "")
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        _stop(process, client)


def test_a_redis_without_aof_is_warned_about(tmp_path, caplog, settings):
    process, client = _redis_server(tmp_path, 'appendonly no\nsave ""\n')
    try:
        settings.MEMORY_REQUIRE_AOF = False
        with caplog.at_level(logging.WARNING, logger="memory.events"):
            assert redis_aof_ensure(client).startswith("off")
        assert "without AOF" in caplog.text
    finally:
        _stop(process, client)


def test_aof_turned_on_without_a_config_file_is_warned_about_as_lost_on_restart(tmp_path, caplog):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: apt-get install -y redis-server"
    port = free_port()
    process, client = _redis_started(
        tmp_path,
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
        port=port,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="memory.events"):
            assert redis_aof_ensure(client) == "turned on"
        assert "lost when" in caplog.text
    finally:
        _stop(process, client)


def _aof_rewriting(client: redis.Redis) -> bool:
    info = client.info("persistence")
    return bool(info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_events_a_dead_consumer_left_pending_are_claimed(redis_client):
    records = [_record(index) for index in range(5)]
    for record in records:
        memory_event_emit_sync(redis_client, record)
    archiver = Archiver(redis=redis_client, consumer="alive", block_ms=10, claim_idle_ms=0)
    archiver.group_ensure()
    # A consumer read them and died before acknowledging.
    redis_client.xreadgroup(GROUP, "dead", {settings.MEMORY_STREAM: ">"}, count=10)

    archiver._claimed_at = 0
    archiver.drain(max_steps=50)

    assert MemoryEvent.objects.count() == 5
    assert archive_backlog(redis_client)["pending"] == 0


def test_a_restarted_archiver_finishes_what_it_had_read(redis_client):
    records = [_record(index) for index in range(4)]
    for record in records:
        memory_event_emit_sync(redis_client, record)
    # The same consumer name read them, then was killed before its commit.
    redis_client.xgroup_create(settings.MEMORY_STREAM, GROUP, id="0", mkstream=True)
    redis_client.xreadgroup(GROUP, "host-1", {settings.MEMORY_STREAM: ">"}, count=10)

    restarted = Archiver(redis=redis_client, consumer="host-1", block_ms=10, claim_idle_ms=60_000)
    restarted.step()

    assert MemoryEvent.objects.count() == 4
    assert archive_backlog(redis_client)["pending"] == 0


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 3)), min_size=1, max_size=30),
    batch=st.integers(1, 7),
)
def test_duplicated_reordered_replayed_events_always_end_in_the_same_table(redis_client, plan, batch):
    """Whatever order and however many times events arrive, the table is one row per event."""
    redis_client.flushdb()
    MemoryEvent.objects.all().delete()
    events = {index: _record(index, event_id=uuid.UUID(int=index + 1)) for index in range(10)}
    for index, copies in plan:
        for _ in range(copies):
            memory_event_emit_sync(redis_client, events[index])
    archiver = Archiver(redis=redis_client, consumer="prop", batch=batch, block_ms=1)
    archiver.group_ensure()

    archiver.drain(max_steps=200)

    expected = {events[index].event_id for index, _ in plan}
    rows = list(MemoryEvent.objects.values_list("event_id", "payload"))
    assert sorted(event_id for event_id, _ in rows) == sorted(expected)
    for event_id, payload in rows:
        assert json.dumps(payload, sort_keys=True) == json.dumps(
            events[event_id.int - 1].data, sort_keys=True
        )
