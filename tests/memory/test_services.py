"""Rehydrating a pair from the archive, and forgetting a player in all three tiers (real
Redis test database and Postgres)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from inference.activation import bonds_key
from memory import pairs
from memory.archiver import Archiver
from memory.events import MemoryEventRecord, memory_event_emit_sync
from memory.models import MemoryEvent
from memory.pairs import HotMemory, pair_prefix, public_facts_key
from memory.services import memory_rehydrate, player_forget
from tests.memory.conftest import load, talk

pytestmark = pytest.mark.django_db


def _archive_all(redis_client) -> Archiver:
    archiver = Archiver(redis=redis_client, consumer="test", block_ms=10)
    archiver.group_ensure()
    archiver.drain()
    return archiver


def test_a_pair_whose_redis_window_expired_is_rebuilt_from_the_archive(redis_client):
    talk("count-valerian", "alice", [f"line {index}" for index in range(25)])
    _archive_all(redis_client)
    for key in redis_client.scan_iter(match="mem:*"):
        redis_client.delete(key)  # thirty days later
    pairs._hot = HotMemory()

    restored = memory_rehydrate(redis=redis_client, npc="count-valerian", player="alice")
    memory, source = load("count-valerian", "alice")

    assert restored == settings.MEMORY_RECENT_TURNS
    assert source == "warm"
    assert [turn.player for turn in memory.turns] == [f"line {index}" for index in range(5, 25)]
    assert memory.relationship["turns"] == 25
    assert redis_client.ttl(pair_prefix("count-valerian", "alice") + "turns") > 0


def test_a_late_rebuild_of_a_pair_redis_still_holds_doubles_no_turn(redis_client):
    """A new pair asks for a rebuild on its first turn; the Celery worker may run it only after
    the turns were archived. The archive's timestamps (microseconds) must match Redis' floats."""
    talk("npc-late", "alice", ["Good evening.", "I brought you a silver ring."])
    _archive_all(redis_client)
    pairs._hot = HotMemory()

    restored = memory_rehydrate(redis=redis_client, npc="npc-late", player="alice")
    memory, _ = load("npc-late", "alice")

    assert restored == 0
    assert [turn.player for turn in memory.turns] == ["Good evening.", "I brought you a silver ring."]


def test_a_rebuild_restores_facts_summaries_and_cards_with_the_latest_values(redis_client):
    talk("count-valerian", "alice", ["I brought you a bottle of wine."])
    events = [
        ("fact", {"text": "They gave you a bottle of wine.", "importance": 8.0}),
        ("summary", {"text": "An early visit."}),
        ("card", {"card": "quest", "fields": {"blood-debt": "accepted"}}),
        ("card", {"card": "relationship", "fields": {"trust": 0.1, "gifts": ["wine"]}}),
        ("summary", {"text": "The latest visit."}),
        ("card", {"card": "quest", "fields": {"blood-debt": "paid", "lost-ring": "asked"}}),
        ("card", {"card": "relationship", "fields": {"trust": 0.4}}),
    ]
    start = datetime.now(UTC)
    for index, (kind, data) in enumerate(events):
        at = start + timedelta(seconds=index)  # strictly in order
        record = MemoryEventRecord(
            kind=kind, npc="count-valerian", player="alice", data=data, session="s", occurred_at=at
        )
        memory_event_emit_sync(redis_client, record)
    _archive_all(redis_client)
    for key in redis_client.scan_iter(match="mem:*"):
        redis_client.delete(key)
    pairs._hot = HotMemory()

    memory_rehydrate(redis=redis_client, npc="count-valerian", player="alice")
    memory, _ = load("count-valerian", "alice")

    assert memory.quest == {"blood-debt": "paid", "lost-ring": "asked"}
    assert memory.relationship["trust"] == 0.4
    assert memory.relationship["gifts"] == ["wine"]
    assert memory.relationship["turns"] == 1
    assert redis_client.zscore(bonds_key("alice"), "count-valerian") == 0.4  # the bond, rebuilt too
    assert memory.summary == "The latest visit."
    assert memory.facts == [("They gave you a bottle of wine.", 8.0)]


def test_forgetting_a_player_clears_redis_and_the_archive_and_drops_events_still_in_flight(redis_client):
    talk("count-valerian", "alice", ["I am Alice."])
    talk("count-valerian", "a:b", ["My id has a colon."])
    talk("count-valerian", "bob", ["I am Bob."])
    _archive_all(redis_client)
    # Emitted before the request to forget, still in the stream when it comes.
    memory_event_emit_sync(redis_client, MemoryEventRecord(kind="turn", npc="shambler", player="alice"))
    redis_client.zadd(bonds_key("alice"), {"count-valerian": 0.9})
    redis_client.zadd(bonds_key("bob"), {"count-valerian": 0.2})

    report = player_forget(redis=redis_client, player="alice")
    archiver = _archive_all(redis_client)

    assert report.archived_events == 1
    assert report.redis_keys > 0
    assert not list(redis_client.scan_iter(match="mem:*:alice:*"))
    assert list(redis_client.scan_iter(match="mem:count-valerian:a:b:*"))  # "a:b" is not "a"…
    assert sorted(MemoryEvent.objects.values_list("player_id", flat=True)) == ["a:b", "bob"]
    assert archiver.stats.forgotten == 1
    assert not redis_client.exists(bonds_key("alice"))
    assert redis_client.exists(bonds_key("bob"))


def test_bridges_drop_a_forgotten_player_from_their_hot_tier(redis_client):
    talk("count-valerian", "alice", ["hi"])
    load("count-valerian", "alice")  # starts this process's eviction listener
    assert pairs._hot.get("count-valerian", "alice") is not None
    time.sleep(0.2)  # the listener's subscription is in place

    # In this thread, outside any event loop: the ORM refuses to run inside one, and a worker
    # thread's connection would outlive the test (and block dropping the test database).
    player_forget(redis=redis_client, player="alice")
    time.sleep(0.3)
    memory, source = load("count-valerian", "alice")

    assert source == "none"
    assert not memory.turns


def test_forget_player_command(redis_client):
    talk("count-valerian", "carol", ["Hello."])
    out = StringIO()

    call_command("forget_player", "carol", stdout=out)

    assert "forgot carol" in out.getvalue()
    assert not list(redis_client.scan_iter(match="mem:*:carol:*"))


def test_forgetting_a_player_called_public_keeps_the_npcs_public_facts(redis_client):
    talk("count-valerian", "public", ["Good evening."])
    redis_client.zadd(public_facts_key("count-valerian"), {"The count hosts a ball each winter.": 5.0})

    player_forget(redis=redis_client, player="public")

    assert redis_client.zcard(public_facts_key("count-valerian")) == 1
    assert redis_client.exists(pair_prefix("count-valerian", "public") + "turns") == 0
