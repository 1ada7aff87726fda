"""The quest card's 2 KB limit holds under concurrent updates (issue 17 item 12): the check and
the write are one step in Redis, so two bridges setting different quests at once cannot both
pass a check the other's write then breaks."""

from __future__ import annotations

import asyncio

from django.conf import settings
from redis.asyncio import Redis

from memory.pairs import CARD_MAX_BYTES, QuestCardFull, memory_quest_update, pair_prefix


def test_concurrent_quest_updates_never_take_the_card_past_2_kb(redis_client):
    # Each quest with its stage is 120 bytes: 17 fit, 40 sent at once would make 4.8 KB.
    quests = [(f"quest-{index:02d}-" + "x" * 55, "stage-" + "y" * 50) for index in range(40)]

    async def update(redis: Redis, quest: str, stage: str) -> bool:
        try:
            await memory_quest_update(
                redis, npc="count-test", player="alice", session="s_1", quest=quest, stage=stage
            )
        except QuestCardFull:
            return False
        return True

    async def scenario() -> list[bool]:
        clients = [Redis.from_url(settings.REDIS_URL) for _ in range(8)]
        try:
            return await asyncio.gather(
                *(update(clients[index % 8], quest, stage) for index, (quest, stage) in enumerate(quests))
            )
        finally:
            for client in clients:
                await client.aclose()

    written = asyncio.run(scenario())
    card = redis_client.hgetall(pair_prefix("count-test", "alice") + "quest")

    assert sum(len(name) + len(stage) for name, stage in card.items()) <= CARD_MAX_BYTES
    assert len(card) == sum(written)  # every update that answered success is on the card
    assert not all(written)
    assert redis_client.xlen(settings.MEMORY_STREAM) == sum(written)  # refused ones archived nothing
