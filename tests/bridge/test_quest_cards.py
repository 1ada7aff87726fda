"""npc.quest: the game sets quest stages on a player's quest card with an NPC, through the real
ASGI app, Postgres and Redis; the card reaches the NPC's memory and the archive's stream."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from redis.asyncio import Redis

from console.services.keys import game_key_create
from memory.events import ENTRY_FIELD
from memory.pairs import memory_for_turn, pair_prefix
from memory.prompt import memory_slot
from tests.bridge.conftest import connect, send, started

pytestmark = pytest.mark.django_db(transaction=True)


def _quest(request_id: str, quest: str, stage: str, npc: str = "count-test") -> dict[str, str]:
    return {"type": "npc.quest", "request_id": request_id, "npc_id": npc, "quest": quest, "stage": stage}


def _replies(secret: str, frames: list[dict[str, str]], *, player: str = "player-1") -> list[dict]:
    """Each frame sent in turn on one session, with the server's reply to it."""

    async def scenario():
        comm = connect(secret)
        await started(comm, player)
        replies = []
        for frame in frames:
            await send(comm, frame)
            replies.append(json.loads(await comm.receive_from(timeout=10)))
        await comm.disconnect()
        return replies

    return async_to_sync(scenario)()


def test_quest_stages_land_on_the_players_card_and_in_the_npcs_memory(game_key, npc, redis_client):
    replies = _replies(
        game_key,
        [
            _quest("q1", "blood-debt", "accepted"),
            _quest("q2", "lost-ring", "asked"),
            _quest("q3", "blood-debt", "paid"),
        ],
    )

    assert [reply["type"] for reply in replies] == ["quest.updated"] * 3
    assert replies[-1]["request_id"] == "q3"
    assert replies[-1]["quests"] == {"blood-debt": "paid", "lost-ring": "asked"}
    stored = redis_client.hgetall(pair_prefix("count-test", "player-1") + "quest")
    assert stored == {b"blood-debt": b"paid", b"lost-ring": b"asked"}
    # Three card events for the archive, in order.
    entries = redis_client.xrange(settings.MEMORY_STREAM)
    cards = [json.loads(fields[ENTRY_FIELD.encode()])["data"]["fields"] for _, fields in entries]
    assert cards == [{"blood-debt": "accepted"}, {"lost-ring": "asked"}, {"blood-debt": "paid"}]

    async def slot() -> str:
        redis = Redis.from_url(settings.REDIS_URL)
        memory, _ = await memory_for_turn(redis, "count-test", "player-1")
        await redis.aclose()
        return memory_slot(memory)

    assert "Quests with them: blood-debt (paid); lost-ring (asked)." in asyncio.run(slot())


def test_another_players_quest_card_is_separate(game_key, npc, redis_client):
    _replies(game_key, [_quest("q1", "blood-debt", "accepted")], player="alice")

    replies = _replies(game_key, [_quest("q1", "lost-ring", "asked")], player="bob")

    assert replies[0]["quests"] == {"lost-ring": "asked"}
    assert redis_client.hgetall(pair_prefix("count-test", "alice") + "quest") == {b"blood-debt": b"accepted"}


def test_a_key_without_the_quests_scope_is_refused(npc, redis_client):
    _, secret = game_key_create(name="play only", scopes=["play", "players"])

    reply = _replies(secret, [_quest("q1", "blood-debt", "accepted")])[0]

    assert (reply["type"], reply["code"], reply["request_id"]) == ("error", "forbidden", "q1")
    assert "quests" in reply["message"]
    assert redis_client.exists(pair_prefix("count-test", "player-1") + "quest") == 0


def test_bad_quests_get_an_error_that_says_what_to_fix_and_nothing_is_written(game_key, npc, redis_client):
    many = [_quest(f"q{index}", f"quest-{index:02d}-" + "x" * 40, "stage-" + "y" * 50) for index in range(30)]

    replies = _replies(
        game_key,
        [
            _quest("q-unknown", "blood-debt", "accepted", npc="nobody-here"),
            _quest("q-long", "blood-debt", "s" * 65),
            _quest("q-slug", "Blood Debt!", "accepted"),
            *many,
        ],
    )

    assert [reply.get("code") for reply in replies[:3]] == ["unknown_npc", "bad_frame", "bad_frame"]
    assert "stage" in replies[1]["message"]
    full = [reply for reply in replies[3:] if reply["type"] == "error"]
    assert full
    assert {reply["code"] for reply in full} == {"too_large"}
    assert "2048" in full[0]["message"]
    card = redis_client.hgetall(pair_prefix("count-test", "player-1") + "quest")
    assert sum(len(k) + len(v) for k, v in card.items()) <= 2048
    assert len(card) == len(replies) - 3 - len(full)  # every refused quest left the card as it was
