"""Stage 2 of a turn, the inputs: what the NPC remembers of this player (its recent turns with
them, facts, cards), the lore that bears on what the player said, and requests to rebuild what
Redis lacks.

Nothing here waits on Postgres, a lore pack build or the embedding model (invariant 1): what
Redis lacks is rebuilt in the background (memory.tasks) and this turn goes on without it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from console.lore.packs import TurnLore, lore_for_turn, lore_pack_load
from console.models import NPC
from inference.context import TurnContext, turn_context_cached
from inference.prompts import AssembledPrompt, Turn
from inference.turn.background import enqueue_once
from memory.pairs import PairMemory, memory_for_turn
from memory.prompt import memory_slot
from memory.tasks import lore_pack_task, memory_rehydrate_task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnInputs:
    """What the model is told besides the persona and the player's words."""

    memory_text: str = ""  # the prompt's memory slot (memory.prompt.memory_slot)
    history: list[Turn] = field(default_factory=list)  # the pair's recent turns, oldest first
    lore: TurnLore = field(default_factory=TurnLore)
    # turn.end's `memory`: where the pair's memory came from ("hot", "warm", "none",
    # "unavailable"), how many recent turns and facts the prompt was offered.
    memory: dict[str, Any] = field(default_factory=lambda: {"source": "none", "turns": 0, "facts": 0})
    # A replay's prompt exactly as it was sent then; None: assembled from the parts above.
    prompt: AssembledPrompt | None = None
    # How long reading the pair's memory and ranking the lore took, in milliseconds rounded as
    # turn.end's `timing` (which carries them); None where the turn loaded none (no player, no
    # Redis, a replay's inputs).
    timing: dict[str, float | None] = field(default_factory=lambda: {"memory_ms": None, "lore_ms": None})


async def turn_inputs_load(
    *, context: TurnContext, player_text: str, redis: Redis | None, player_id: str | None
) -> TurnInputs:
    """The inputs of a live turn. Without a player there is no pair to remember (npc_say); without
    Redis there is no memory or lore at all."""
    if redis is None:
        return TurnInputs(lore=TurnLore(state="unavailable"))
    pair, source = PairMemory(), "none"
    started = time.perf_counter()
    if player_id is not None:
        pair, source = await _pair_memory(redis, context.npc_slug, player_id)
    remembered = time.perf_counter()
    recent = list(pair.turns)[-settings.BRIDGE_HISTORY_TURNS :]
    lore = await _turn_lore(redis, context, player_text, pair)
    ranked = time.perf_counter()
    return TurnInputs(
        memory_text=memory_slot(pair),
        history=[Turn(player=turn.player, npc=turn.npc) for turn in recent],
        lore=lore,
        memory={"source": source, "turns": len(recent), "facts": len(pair.facts) + len(pair.public_facts)},
        timing={
            "memory_ms": round((remembered - started) * 1000, 1) if player_id is not None else None,
            "lore_ms": round((ranked - remembered) * 1000, 1),
        },
    )


def turn_inputs_from_trace(trace: dict[str, Any]) -> TurnInputs:
    """The inputs a traced turn ran with, as its trace kept them: its prompt as sent, what it said
    of its memory and lore (a replay runs on them, not on what the NPC remembers today)."""
    memory = trace.get("memory") or {"source": "none", "turns": 0, "facts": 0}
    prompt = AssembledPrompt(
        messages=list(trace.get("messages") or []),
        prompt_tokens=int((trace.get("usage") or {}).get("prompt_tokens") or 0),
        sections=dict(trace.get("prompt_sections") or {}),
        dropped=list(trace.get("dropped") or []),
    )
    lore = TurnLore(used=list(trace.get("lore") or []), state=str(trace.get("lore_state") or "none"))
    return TurnInputs(lore=lore, memory=dict(memory), prompt=prompt)


async def _pair_memory(redis: Redis, npc_id: str, player_id: str) -> tuple[PairMemory, str]:
    try:
        memory, source = await memory_for_turn(redis, npc_id, player_id)
    except RedisError as exc:
        # The NPC still answers, without its memory of this player, rather than not at all.
        logger.error("memory of %s for %s unavailable: %s", npc_id, player_id, exc)
        return PairMemory(), "unavailable"
    if source == "none":
        # Redis holds nothing of this pair: rebuild it from the archive in the background;
        # this turn goes on without it (a pair that never met simply finds nothing).
        enqueue_once(redis, memory_rehydrate_task, npc_id, player_id)
    return memory, source


async def _turn_lore(redis: Redis, context: TurnContext, player_text: str, memory: PairMemory) -> TurnLore:
    """The turn's lore slot; never waits on Postgres, a pack build or the embedding model."""
    try:
        lore = await lore_for_turn(
            redis, npc=context.npc_slug, archetype=context.archetype_slug,
            subfaction=context.subfaction_slug, player_text=player_text, quests=memory.quest,
        )  # fmt: skip
    except RedisError as exc:
        logger.warning("lore of %s unavailable: %s", context.npc_slug, exc)
        return TurnLore(state="unavailable")
    if lore.state == "no_pack":
        enqueue_once(redis, lore_pack_task, context.npc_slug)
    logger.info("lore for %s: %s %s", context.npc_slug, lore.state, lore.used)
    return lore


async def turn_inputs_prefetch(*, redis: Redis, npc_id: str, player_id: str) -> None:
    """A Gold promotion: the NPC's turn context, its memory of the nearest player (hot tier) and
    its lore pack are loaded now, so its first turn does not wait on them; what Redis lacks is
    rebuilt in the background. Positions may name NPCs the console does not know: skipped."""
    try:
        await turn_context_cached(npc_id)
    except NPC.DoesNotExist:
        return
    try:
        _, source = await memory_for_turn(redis, npc_id, player_id)
        if source == "none":
            enqueue_once(redis, memory_rehydrate_task, npc_id, player_id)
        if await lore_pack_load(redis, npc_id) is None:
            enqueue_once(redis, lore_pack_task, npc_id)
    except RedisError as exc:
        logger.info("gold prefetch of %s skipped: %s", npc_id, exc)
