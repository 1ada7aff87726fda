"""One NPC turn, from "an NPC must answer" to "remembered and observed": `turn_take`.

The game websocket (bridge.consumers), `manage.py npc_say` and a traced turn's replay
(inference.turn.replay) all take their turns here. Whoever asks brings the turn's context, the
player's words and, for a live player, their session; the turn reaches them through a TurnIO
(the websocket sends frames, npc_say prints), so nothing here knows about sockets or Channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference.context import TurnContext
from inference.sampling import TierSampling
from inference.turn.background import in_background
from inference.turn.inputs import TurnInputs, turn_inputs_load
from inference.turn.plan import TurnPlan, turn_plan
from inference.turn.play import TurnResult, turn_run
from inference.turn.remember import TurnSession, turn_remember, turn_trace
from inference.workers import workers_healthy_cached


@dataclass(frozen=True)
class TurnRequest:
    """One turn to take."""

    context: TurnContext
    player_text: str
    # The live player's session: their memory is read and the turn remembered and observed.
    # None (npc_say, a replay): nobody's memory, no lore, nothing written.
    session: TurnSession | None = None
    tier: str | None = None  # None: the NPC's own (inference.turn.plan.turn_tier)
    tier_reason: str = "requested"  # why, when `tier` is given
    sampling: TierSampling | None = None  # None: the tier's
    inputs: TurnInputs | None = None  # given (a replay's): not loaded
    # The healthy workers; None: the turn path's cached probes (inference.workers.workers_healthy_cached).
    workers: Sequence[str] | None = None
    greedy: bool = False
    seed: int | None = None  # None: TURN_SEED


@dataclass(frozen=True)
class TurnOutcome:
    plan: TurnPlan
    inputs: TurnInputs
    result: TurnResult
    # What the archive keeps to explain the turn (inference.turn.remember.turn_trace); it holds
    # the result's payload (inference.turn.play.turn_result_payload) too.
    trace: dict[str, Any]


class TurnIO:
    """How a turn reaches whoever asked for it. Each method does nothing here: a caller overrides
    what it needs. An exception raised by one ends the turn there (and reaches turn_take's caller)."""

    async def turn_started(self, plan: TurnPlan) -> None:
        """The plan is made; nothing is loaded or generated yet."""

    async def turn_delta(self, plan: TurnPlan, text: str) -> None:
        """The next piece of the reply, already past the guardrails."""

    async def turn_ended(self, outcome: TurnOutcome) -> None:
        """The reply is whole. Memory and observers come after this returns, in the background."""

    async def turn_observed(self, outcome: TurnOutcome) -> None:
        """The turn is remembered and counted (only turns of a session get here): tell observers."""


async def turn_take(*, request: TurnRequest, io: TurnIO) -> TurnOutcome:
    """Plan, load the inputs, play and remember one turn (see the package's stages)."""
    context, session = request.context, request.session
    redis = session.redis if session is not None else None

    plan = await turn_plan(
        context=context, redis=redis, tier=request.tier, tier_reason=request.tier_reason,
        sampling=request.sampling,
    )  # fmt: skip
    await io.turn_started(plan)

    inputs = request.inputs or await turn_inputs_load(
        context=context, player_text=request.player_text, redis=redis,
        player_id=session.player_id if session is not None else None,
    )  # fmt: skip

    async def delta(text: str) -> None:
        await io.turn_delta(plan, text)

    result = await turn_run(
        context=context,
        player_text=request.player_text,
        workers=request.workers if request.workers is not None else await workers_healthy_cached(),
        history=inputs.history,
        memory=inputs.memory_text,
        lore=inputs.lore.slot,
        tier=plan.tier,
        on_delta=delta,
        greedy=request.greedy,
        seed=request.seed,
        sampling=plan.sampling,
        prompt=inputs.prompt,
    )

    outcome = TurnOutcome(
        plan=plan, inputs=inputs, result=result,
        trace=turn_trace(context=context, plan=plan, inputs=inputs, result=result),
    )  # fmt: skip
    await io.turn_ended(outcome)
    if session is not None:
        # In the background, after the player has the reply: a cancel can no longer reach it.
        remembering = in_background(
            turn_remember(
                session=session,
                context=context,
                plan=plan,
                player_text=request.player_text,
                result=result,
                trace=outcome.trace,
                observed=lambda: io.turn_observed(outcome),
            )  # fmt: skip
        )
        session.remembering.add(remembering)
        remembering.add_done_callback(session.remembering.discard)
    return outcome
