"""An NPC remembers, end to end: real Daphne, Celery worker, archiver, vLLM worker, Redis and
Postgres. One player gives a gift and leaves; the gift reaches that player's relationship card,
facts and prompt, never another player's; the archive holds every turn."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis
from django.conf import settings
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from memory import pairs
from memory.models import MemoryEvent, MemoryEventKind
from memory.pairs import HotMemory, memory_for_turn, pair_prefix
from memory.prompt import memory_slot
from tests.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def _conversation(url: str, key: str, npc: str, player: str, lines: list[str]) -> list[dict]:
    """One session: each line as npc.say after the previous turn.end; then the player leaves."""
    ends = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
        await socket.send(json.dumps({"type": "session.start", "player_id": player}))
        for index, line in enumerate(lines):
            await socket.send(
                json.dumps({"type": "npc.say", "request_id": f"r{index}", "npc_id": npc, "text": line})
            )
            async with asyncio.timeout(240):
                async for raw in socket:
                    frame = json.loads(raw)
                    assert frame["type"] not in ("error", "turn.error"), frame
                    if frame["type"] == "turn.end":
                        ends.append(frame)
                        break
    return ends


def test_an_npc_remembers_a_gift_for_the_player_who_gave_it_and_only_for_them(
    daphne, celery_worker_process, archiver_process, plain_npc, key
):
    npc = plain_npc.slug
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.REDIS_URL)  # not flushed: the Celery worker's queues live there

    asyncio.run(_conversation(daphne, key, npc, alice, ["Good evening.", "I brought you a silver ring."]))
    asyncio.run(_conversation(daphne, key, npc, bob, ["Hello there."]))

    # They left: the Celery worker consolidates each pair (the model writes the summary).
    card = wait_for(
        lambda: client.hgetall(pair_prefix(npc, alice) + "relationship").get(b"gifts"), what="alice's card"
    )
    assert json.loads(card) == ["a silver ring"]
    wait_for(
        lambda: client.hexists(pair_prefix(npc, bob) + "relationship", "consolidated_at"), what="bob's card"
    )
    assert not client.hexists(pair_prefix(npc, bob) + "relationship", "gifts")

    # Alice comes back: the memory her next turn is given carries the gift; Bob's does not.
    async def memory_of(player: str):
        pairs._hot = HotMemory()
        connection = Redis.from_url(settings.REDIS_URL)
        try:
            return (await memory_for_turn(connection, npc, player))[0]
        finally:
            await connection.aclose()

    alice_memory, bob_memory = asyncio.run(memory_of(alice)), asyncio.run(memory_of(bob))
    assert "Gifts they gave you: a silver ring." in memory_slot(alice_memory)
    assert ("They gave you a silver ring.", 8.0) in alice_memory.facts
    assert alice_memory.summary
    assert "ring" not in memory_slot(bob_memory)
    alice_back = asyncio.run(_conversation(daphne, key, npc, alice, ["Do you remember me?"]))
    assert alice_back[0]["text"]

    # The archive holds every turn, and the card change.
    turns = wait_for(
        lambda: MemoryEvent.objects.filter(player_id=alice, kind=MemoryEventKind.TURN).count() == 3,
        timeout_s=60,
        what="alice's three turns in the archive",
    )
    assert turns
    said = list(
        MemoryEvent.objects.filter(player_id=alice, kind=MemoryEventKind.TURN)
        .order_by("occurred_at")
        .values_list("payload__player", flat=True)
    )
    assert said == ["Good evening.", "I brought you a silver ring.", "Do you remember me?"]
    assert MemoryEvent.objects.filter(player_id=alice, kind=MemoryEventKind.CARD).exists()
    assert MemoryEvent.objects.filter(player_id=bob, kind=MemoryEventKind.TURN).count() == 1
