"""A traced turn played again: its prompt exactly as sent then, greedily, on the NPC's current
adapters, through the same pipeline as a live turn (what the NPC would say now; the trace page
compares it with what it said then). Nothing is remembered or observed."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from console.services.adapters import BASE_MODEL_NAME
from inference.context import TurnContext
from inference.sampling import tier_sampling
from inference.turn.inputs import turn_inputs_from_trace
from inference.turn.pipeline import TurnIO, TurnRequest, turn_take
from inference.workers import workers_probe_now

# A designer waits for a replay; it is not a player's turn, so the tier's deadline (which cuts a
# slow reply short with a bark) does not apply. The engine's own timeouts still do.
REPLAY_DEADLINE_S = 120.0


@dataclass(frozen=True)
class Replay:
    text: str
    adapter: str
    worker: str | None
    total_ms: float
    error: str = ""
    trace: dict[str, Any] = field(default_factory=dict)  # the replayed turn's, same keys as a live one's


async def turn_replay(*, context: TurnContext, trace: dict[str, Any], player_text: str) -> Replay:
    """Replay the turn `trace` explains (an archived turn's), for the NPC of `context`."""
    # A trace that names no tier replays as Gold (96 tokens at most), as replays always did.
    tier = str(trace["tier"]) if trace.get("tier") in ("gold", "silver") else "gold"
    then = tier_sampling(tier)
    sampling = dataclasses.replace(
        then,
        max_tokens=int((trace.get("sampling") or {}).get("max_tokens") or then.max_tokens),
        deadline_s=REPLAY_DEADLINE_S,
        priority=tier_sampling("silver").priority,  # a designer waits, but players come first
    )
    request = TurnRequest(
        context=context, player_text=player_text, tier=tier, tier_reason="replay", sampling=sampling,
        inputs=turn_inputs_from_trace(trace), greedy=True,
        # Asked afresh, not from the turn path's cached probes: a designer waits a second or two,
        # and a cache seen from this process (a probe that timed out under load) must not say
        # "no worker" while the worker is serving players.
        workers=await asyncio.to_thread(workers_probe_now),
    )  # fmt: skip
    outcome = await turn_take(request=request, io=TurnIO())
    result = outcome.result
    adapter = result.adapters.get("dialogue_style", BASE_MODEL_NAME)
    if "worker_down" in result.fallbacks:
        if result.worker is None:
            error = "no healthy worker: start one (make run starts it)"
            return Replay("", adapter, None, 0.0, error, outcome.trace)
        return Replay(result.text, adapter, result.worker, 0.0, "the worker failed mid-turn", outcome.trace)
    return Replay(result.text, adapter, result.worker, round(result.total_ms, 1), "", outcome.trace)
