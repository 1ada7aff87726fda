"""Forgetting a player while archivers are busy writing that player's events (real Redis test
database, real Postgres, archivers in threads with their own connections): nothing of the
player survives, in any copy."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django_celery_results.models import TaskResult

from inference.observability import COST_KEY, WORKER_MS_KEY
from memory.archiver import Archiver
from memory.events import ENTRY_FIELD, MemoryEventRecord, event_from_entry, memory_event_emit_sync
from memory.models import MemoryEvent
from memory.pairs import pair_prefix, public_facts_key
from memory.services import player_forget, public_fact_publish

# Threads write through their own connections: the test's own transaction would hide their rows.
pytestmark = pytest.mark.django_db(transaction=True)

NPC = "count-valerian"
DEAD = settings.MEMORY_STREAM + ":dead"


def _archivers(stop: threading.Event, errors: list[BaseException], count: int = 2) -> list[threading.Thread]:
    def run(name: str) -> None:
        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            # Small batches: many check-then-insert windows for a forget to fall into.
            Archiver(redis=client, consumer=name, batch=5, block_ms=5, claim_idle_ms=60_000).run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost with the thread
            errors.append(exc)
        finally:
            client.close()
            connection.close()

    threads = [threading.Thread(target=run, args=(f"busy-{index}",)) for index in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _producer(
    stop: threading.Event, players: list[str], at: datetime, sent: dict[str, int]
) -> threading.Thread:
    def run() -> None:
        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            for player in itertools.cycle(players):
                if stop.is_set():
                    return
                # Stamped before every forget: turns that happened earlier and were still on
                # their way (a slow bridge, a Redis backlog) when the player was forgotten.
                record = MemoryEventRecord(
                    kind="turn", npc=NPC, player=player, data={"player": "hi"}, occurred_at=at
                )
                memory_event_emit_sync(client, record)
                sent[player] = sent.get(player, 0) + 1
                time.sleep(0.0005)
        finally:
            client.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _copies(redis_client: redis.Redis, player: str, hour: int) -> None:
    """Every kind of copy the stack keeps of a player, outside their archived turns."""
    fact = f"{player} swore to bring back the ring"
    redis_client.zadd(pair_prefix(NPC, player) + "facts", {fact: 6.0})
    public_fact_publish(redis=redis_client, npc=NPC, player=player, fact=fact)
    # A fact only the archive still holds (the pair's Redis window expired), published earlier.
    archived_fact = f"{player} owes the count a favour"
    MemoryEvent.objects.create(
        event_id=uuid.uuid4(), kind="fact", npc_slug=NPC, player_id=player,
        occurred_at=datetime.now(UTC) - timedelta(days=40), payload={"text": archived_fact, "importance": 4},
    )  # fmt: skip
    redis_client.zadd(public_facts_key(NPC), {archived_fact: 4.0})
    # Refused by Postgres (a NUL): the archiver dead-letters it with the player's words.
    memory_event_emit_sync(
        redis_client, MemoryEventRecord(kind="turn", npc=NPC, player=player, data={"player": "bad\u0000"})
    )
    redis_client.xadd(DEAD, {ENTRY_FIELD: f'{{"player": {json.dumps(player)}, broken', "reason": "test"})
    TaskResult.objects.create(
        task_id=f"task-{player}", task_name="memory.tasks.memory_consolidate_task", status="SUCCESS",
        task_args=json.dumps(repr((NPC, player))), result=json.dumps({"turns": 3}),
    )  # fmt: skip
    redis_client.zadd(COST_KEY.format(kind="player", hour=hour), {player: 120})
    redis_client.zadd(WORKER_MS_KEY.format(kind="player", hour=hour), {player: 900})


def _survivors(redis_client: redis.Redis, player: str, hour: int) -> list[str]:
    found = []
    if rows := MemoryEvent.objects.filter(player_id=player).count():
        found.append(f"{rows} archived events")
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrange(settings.MEMORY_STREAM)
    stream = [fields for _, fields in entries if player.encode() in fields[ENTRY_FIELD.encode()]]
    if stream:
        found.append(f"{len(stream)} entries in the event stream")
    if dead := [
        f for _, f in redis_client.xrange(DEAD) if player.encode() in f.get(ENTRY_FIELD.encode(), b"")
    ]:
        found.append(f"{len(dead)} dead letters")
    if keys := list(redis_client.scan_iter(match=f"mem:*:{player}:*")):
        found.append(f"Redis keys {keys}")
    if public := [f for f in redis_client.zrange(public_facts_key(NPC), 0, -1) if player.encode() in f]:
        found.append(f"public facts {public}")
    if TaskResult.objects.filter(task_args__contains=player).exists():
        found.append("a Celery task result")
    for key in (COST_KEY, WORKER_MS_KEY):
        if redis_client.zscore(key.format(kind="player", hour=hour), player) is not None:
            found.append(f"cost entry in {key}")
    return found


def test_forgetting_players_while_busy_archivers_write_their_events_leaves_nothing_of_them(redis_client):
    # Given players with every kind of copy, and archivers busy with a steady stream of their
    # events and a bystander's
    hour = int(time.time() // 3600)
    players = [f"alice-{index}" for index in range(8)]
    for player in [*players, "bob"]:
        _copies(redis_client, player, hour)
    at = datetime.now(UTC) - timedelta(seconds=5)
    stop_archivers, stop_producer = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    sent: dict[str, int] = {}
    archivers = _archivers(stop_archivers, errors)
    producer = _producer(stop_producer, [*players, "bob"], at, sent)
    try:
        # When each player is forgotten while their events keep arriving and being archived
        for player in players:
            time.sleep(0.03)
            player_forget(redis=redis_client, player=player)
    finally:
        stop_producer.set()
        producer.join()
        time.sleep(0.5)  # the archivers take the backlog
        stop_archivers.set()
        for thread in archivers:
            thread.join()
    final = Archiver(redis=redis_client, consumer="final", block_ms=5, claim_idle_ms=0)
    final.group_ensure()
    final.drain(max_steps=1000)
    final._trimmed_at = 0
    final.step()

    # Then nothing of them survives anywhere, and the bystander keeps everything
    assert errors == []
    assert {player: _survivors(redis_client, player, hour) for player in players} == {p: [] for p in players}
    assert MemoryEvent.objects.filter(player_id="bob", kind="turn").count() == sent["bob"]
    # rows, dead letters, the pair key, public facts, the task result, two cost entries
    assert len(_survivors(redis_client, "bob", hour)) == 7
    assert redis_client.xlen(settings.MEMORY_STREAM) == 0


def test_a_turn_in_flight_when_its_player_is_forgotten_is_not_remembered(redis_client):
    from redis.asyncio import Redis as AsyncRedis

    from memory.pairs import memory_record_turn

    async def record(started_at: float) -> int:
        client = AsyncRedis.from_url(settings.REDIS_URL)
        try:
            return await memory_record_turn(
                client, npc=NPC, player="alice", session="s_1", player_text="Hello there.",
                npc_text="Good evening.", emotion="calm", action="bow", started_at=started_at,
            )  # fmt: skip
        finally:
            await client.aclose()

    # Given a turn that began, then its player forgotten before the turn was recorded
    began = time.time()
    player_forget(redis=redis_client, player="alice")

    # When the turn ends and is recorded
    recorded = asyncio.run(record(began))

    # Then nothing of it is written, in Redis or on its way to the archive
    assert recorded == 0
    assert list(redis_client.scan_iter(match=pair_prefix(NPC, "alice") + "*")) == []
    assert redis_client.xlen(settings.MEMORY_STREAM) == 0
    # And a turn the player begins after the forget is remembered as any other
    assert asyncio.run(record(time.time())) == 1


def test_a_consolidation_running_when_its_player_is_forgotten_writes_nothing_back(redis_client, monkeypatch):
    from inference.activation import bonds_key
    from memory import consolidation
    from memory.consolidation import pair_consolidate
    from tests.memory.conftest import talk

    talk(NPC, "alice", ["Good evening, Count.", "I brought you a silver ring."])
    summarise = consolidation.summary_write

    async def summary_while_forgotten(**kwargs):
        # The model writes its summary while an operator forgets the player.
        await asyncio.to_thread(player_forget, redis=redis_client, player="alice")
        return await summarise(**kwargs)

    monkeypatch.setattr(consolidation, "summary_write", summary_while_forgotten)

    report = asyncio.run(
        pair_consolidate(
            redis=redis_client, npc=NPC, npc_name="Count Valerian", archetype="vampire",
            persona="You are Count Valerian.", player="alice", workers=[],
        )
    )  # fmt: skip

    assert report.turns == 0
    assert list(redis_client.scan_iter(match=pair_prefix(NPC, "alice") + "*")) == []
    assert redis_client.exists(bonds_key("alice")) == 0
    # The stream holds only the two turns from before (the archiver drops them: the tombstone)
    kinds = [event_from_entry(fields).kind for _, fields in redis_client.xrange(settings.MEMORY_STREAM)]
    assert kinds == ["turn", "turn"]
