"""Stage 4 of a turn, remember: the trace that explains the turn later, the turn into the NPC's
memory of the player (hot tier, Redis, the archive's stream), its cost into the ops figures, and
the observers (ops and playtest pages) told, in that order, after the player has the reply.

A player's words become memory (facts, a summary) by consolidation: every
MEMORY_CONSOLIDATE_EVERY turns of a pair, and when the player leaves, once the session's turns
are written (session_memory_consolidate).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.context import TurnContext
from inference.observability import turn_observe
from inference.turn.background import enqueue_once
from inference.turn.inputs import TurnInputs
from inference.turn.plan import TurnPlan
from inference.turn.play import TurnResult, turn_result_payload
from memory.pairs import memory_record_turn
from memory.tasks import memory_consolidate_task

logger = logging.getLogger(__name__)


class TurnSession(Protocol):
    """A player's session as the pipeline sees it (bridge.sessions.GameSession is one): who
    speaks, where their memory lives, and what to consolidate when they leave."""

    redis: Redis
    player_id: str
    session_id: str
    talked: set[str]  # NPCs spoken to since the socket attached
    remembering: set[asyncio.Task[None]]  # turns being written to memory


def turn_trace(
    *, context: TurnContext, plan: TurnPlan, inputs: TurnInputs, result: TurnResult
) -> dict[str, Any]:
    """What the archive keeps of a turn to explain it later (the console's trace page), and what
    a replay of it gives back: the same keys whoever played the turn."""
    payload = turn_result_payload(result)
    return {
        **payload, "timing": {**payload["timing"], **inputs.timing},  # the inputs' parts beside play's
        "turn_id": plan.turn_id, "tier_reason": plan.tier_reason,
        "region": context.region_slug, "archetype": context.archetype_slug,
        "archetype_version": context.archetype_version, "lore": inputs.lore.used,
        "lore_state": inputs.lore.state, "memory": inputs.memory, "messages": result.messages,
    }  # fmt: skip


async def turn_remember(
    *,
    session: TurnSession,
    context: TurnContext,
    plan: TurnPlan,
    player_text: str,
    result: TurnResult,
    trace: dict[str, Any],
    observed: Callable[[], Awaitable[None]],
) -> None:
    """The finished turn into memory and the ops figures, then `observed()` (the observers)."""
    await _memory_write(session, context.npc_slug, player_text, result, trace, plan.started_at)
    try:
        await turn_observe(
            session.redis, npc=context.npc_slug, archetype=context.archetype_slug,
            region=context.region_slug, player=session.player_id, payload=trace,
        )  # fmt: skip
    except RedisError as exc:
        logger.info("ops figures missed a turn: %s", exc)
    await observed()


async def _memory_write(
    session: TurnSession, npc_id: str, player_text: str, result: TurnResult, trace: dict[str, Any],
    started_at: float,
) -> None:  # fmt: skip
    """The finished turn into memory (hot, Redis, the archive's stream), after the player has it."""
    try:
        turns = await memory_record_turn(
            session.redis,
            npc=npc_id,
            player=session.player_id,
            session=session.session_id,
            player_text=player_text,
            npc_text=result.text,
            emotion=result.emotion,
            action=result.action,
            trace=trace,
            started_at=started_at,
        )
    except RedisError as exc:
        # The player already has the reply; the turn is missing from memory and the archive.
        logger.error("turn of %s with %s not remembered: %s", npc_id, session.player_id, exc)
        return
    if not turns:
        logger.info(
            "turn of %s with %s not remembered: the player was forgotten meanwhile", npc_id, session.player_id
        )
        return
    session.talked.add(npc_id)
    if turns % settings.MEMORY_CONSOLIDATE_EVERY == 0:
        enqueue_once(session.redis, memory_consolidate_task, npc_id, session.player_id)


async def session_memory_consolidate(*, session: TurnSession) -> None:
    """The player left (or lost the connection): what they said becomes memory now, once the
    turns still being written to memory are there (a client may close right after its last
    turn.end)."""
    await asyncio.gather(*session.remembering, return_exceptions=True)
    for npc_id in list(session.talked):
        enqueue_once(session.redis, memory_consolidate_task, npc_id, session.player_id)
        session.talked.discard(npc_id)
