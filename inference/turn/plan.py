"""Stage 1 of a turn, the plan: which tier the NPC answers at (and so how much it may say, how
long it may take, and how the worker schedules it), why, and which dialogue adapter speaks.

The tier is the one the game's positions placed the NPC in (inference.activation), demoted
from Gold to Silver once the NPC's region has spent its token budget this hour, or
BRIDGE_DEFAULT_TIER for an NPC no positions frame has placed. A caller may also ask for a tier
(npc_say's --tier, a replay of a traced turn). What each tier may generate is
inference.sampling's table.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.activation import tier_current
from inference.context import TurnContext
from inference.observability import region_over_budget
from inference.sampling import TierSampling, tier_sampling


@dataclass(frozen=True)
class TurnPlan:
    """What a turn was decided to be before anything is loaded or generated."""

    turn_id: str
    tier: str
    tier_reason: (
        str  # "positions", "region_budget", "default", or what the caller said ("requested", "replay")
    )
    sampling: TierSampling
    adapter: str | None  # the served name of the dialogue adapter (turn.start's `adapter`)
    # Wall-clock start: a forget of the player after this drops the turn's memory
    # (memory.pairs.memory_record_turn's `started_at`).
    started_at: float


async def turn_tier(redis: Redis, context: TurnContext) -> tuple[str, str]:
    """The turn's tier and why: placed by positions, demoted by the region's budget, or the default."""
    tier, reason = settings.BRIDGE_DEFAULT_TIER, "default"
    try:
        placed = await tier_current(redis, context.npc_slug, region=context.region_slug)
        if placed is not None:
            tier, reason = placed, "positions"
        if tier == "gold" and await region_over_budget(
            redis, context.region_slug, context.region_token_budget
        ):
            tier, reason = "silver", "region_budget"  # the region spent its tokens this hour
    except RedisError:
        pass  # the default tier: a turn is not refused for want of its tier
    return tier, reason


async def turn_plan(
    *,
    context: TurnContext,
    redis: Redis | None,
    tier: str | None = None,
    tier_reason: str = "requested",
    sampling: TierSampling | None = None,
) -> TurnPlan:
    """The plan of one turn. Without a `tier` the NPC's own (turn_tier); without Redis (npc_say)
    BRIDGE_DEFAULT_TIER. `sampling` replaces the tier's (a replay keeps its traced length)."""
    started_at = time.time()
    if tier is None:
        if redis is None:
            tier, tier_reason = settings.BRIDGE_DEFAULT_TIER, "default"
        else:
            tier, tier_reason = await turn_tier(redis, context)
    return TurnPlan(
        turn_id="t_" + secrets.token_urlsafe(9),
        tier=tier,
        tier_reason=tier_reason,
        sampling=sampling or tier_sampling(tier),
        adapter=context.routes.get("dialogue_style"),
        started_at=started_at,
    )
