"""The archiver against the real Redis (test database) and Postgres: batches, idempotence,
poison events, dead consumers, trimming."""

from __future__ import annotations

import json
import uuid

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from memory.archiver import GROUP, Archiver, archive_backlog
from memory.events import ENTRY_FIELD, MemoryEventRecord, memory_event_emit_sync
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


def test_poison_events_go_to_the_dead_letter_stream_after_k_tries_and_the_rest_is_archived(redis_client):
    good = [_record(index) for index in range(3)]
    memory_event_emit_sync(redis_client, good[0])
    redis_client.xadd(settings.MEMORY_STREAM, {ENTRY_FIELD: "{not json"})
    memory_event_emit_sync(redis_client, good[1])
    # JSON that Postgres's jsonb refuses (a NUL character): only the insert can tell.
    memory_event_emit_sync(redis_client, _record(9, data={"text": "bad\u0000byte"}))
    memory_event_emit_sync(redis_client, good[2])
    archiver = Archiver(redis=redis_client, consumer="test-1", block_ms=10, claim_idle_ms=0, max_deliveries=3)
    archiver.group_ensure()

    for _ in range(10):
        archiver._claimed_at = 0  # claim on every idle step
        archiver.step()

    assert set(MemoryEvent.objects.values_list("event_id", flat=True)) == {r.event_id for r in good}
    dead = redis_client.xrange(settings.MEMORY_STREAM + ":dead")
    reasons = sorted(fields[b"reason"].decode() for _, fields in dead)
    assert len(reasons) == 2
    assert reasons[0].startswith("not a memory event")
    assert reasons[1].startswith("refused by Postgres")
    assert archive_backlog(redis_client)["pending"] == 0


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
