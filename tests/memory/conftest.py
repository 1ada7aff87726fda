"""Memory test helpers: a fresh hot tier per test, turns recorded as the bridge records them,
and a pair's memory loaded as a turn loads it."""

from __future__ import annotations

import asyncio

from django.conf import settings
from redis.asyncio import Redis

from memory.pairs import PairMemory, memory_for_turn, memory_record_turn


def talk(npc: str, player: str, lines: list[str]) -> None:
    """`player` says each line to `npc` in turn; the NPC answers "reply N", amused, with a bow."""

    async def scenario():
        redis = Redis.from_url(settings.REDIS_URL)
        for index, line in enumerate(lines):
            await memory_for_turn(redis, npc, player)
            await memory_record_turn(
                redis, npc=npc, player=player, session="s_1", player_text=line,
                npc_text=f"reply {index}", emotion="amused", action="bow",
            )  # fmt: skip
        await redis.aclose()

    asyncio.run(scenario())


def load(npc: str, player: str) -> tuple[PairMemory, str]:
    """The pair's memory and its source, as the next turn would get them."""

    async def scenario():
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            return await memory_for_turn(redis, npc, player)
        finally:
            await redis.aclose()

    return asyncio.run(scenario())
