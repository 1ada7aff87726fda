"""A turn over the game socket: whether an `npc.say` may start a turn now (turn_check), and how
the turn (inference.turn.pipeline) reaches the session as turn.start, turn.delta and turn.end or
turn.error frames (docs/protocol.md), frees its NPC and its place under the caps, and reaches the
observers (ops and playtest pages) through the channel layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from bridge.limits import turn_admit, turn_release
from bridge.protocol import NpcSay, ProtocolError, turn_error_frame
from bridge.sessions import GameSession, SlowConsumer
from console.models import NPC, NPCStatus
from inference.context import TurnContext, turn_context_cached
from inference.turn.background import in_background
from inference.turn.pipeline import TurnIO, TurnOutcome, TurnRequest, turn_take
from inference.turn.plan import TurnPlan

logger = logging.getLogger(__name__)

# What turn.end carries of a turn's result (docs/protocol.md); traces carry more.
TURN_END_FIELDS = ("text", "emotion", "action", "usage", "timing", "fallbacks")

# Finished turns for observers (ops and playtest pages), through the channel layer.
OBSERVER_GROUP = "observe.turns"


async def turn_check(
    session: GameSession, message: NpcSay, *, owner: str, slot: str
) -> TurnContext | dict[str, Any]:
    """The NPC's turn context when `message` may start a turn now (its place under the caps is
    then taken), else the turn.error frame refusing it; a ProtocolError for a bad request."""
    request_id, npc_id = message.request_id, message.npc_id
    if request_id in session.turns:
        raise ProtocolError("duplicate_request", f"request_id {request_id} is already in flight")
    if npc_id in session.busy_npcs:
        busy = f"{npc_id} is answering request {session.busy_npcs[npc_id]}; "
        return turn_error_frame(request_id, "busy", busy + "wait for its turn.end or send npc.cancel")
    try:
        context = await turn_context_cached(npc_id)
    except NPC.DoesNotExist:
        raise ProtocolError("unknown_npc", f"no NPC has npc_id {npc_id!r}") from None
    if context.status != NPCStatus.ACTIVE:
        reason = f"{npc_id} is {context.status} and does not answer"
        return turn_error_frame(request_id, "npc_unavailable", reason)
    refusal = await turn_admit(session.redis, owner=owner, slot=slot)
    if refusal is not None:
        return turn_error_frame(request_id, "busy", refusal)
    return context


class SocketTurn(TurnIO):
    """One npc.say's turn on its session."""

    def __init__(self, session: GameSession, *, message: NpcSay, owner: str, slot: str) -> None:
        self.session, self.message = session, message
        self.request_id, self.npc_id = message.request_id, message.npc_id
        self.owner, self.slot = owner, slot  # its place under the caps (bridge.limits.turn_admit)
        self.released = False
        self.turn_id = ""  # known once the turn is planned
        self.end: dict[str, Any] = {}
        # Set once turn.start (or the turn's error) is sent: the socket answers its next frame
        # only then (docs/protocol.md, "Ordering").
        self.answered = asyncio.Event()

    async def play(
        self, context: TurnContext, *, on_slow_consumer: Callable[[SlowConsumer], Awaitable[None]]
    ) -> None:
        """The turn, from turn.start to turn.end or turn.error (the session's task for it)."""
        request_id, session = self.request_id, self.session
        try:
            # Whatever fails from here on, the turn ends with turn.end or turn.error.
            request = TurnRequest(context=context, player_text=self.message.text, session=session)
            await turn_take(request=request, io=self)
        except asyncio.CancelledError:
            # npc.cancel, or the session expired: closing the engine stream aborted generation.
            await quietly(session.send(turn_error_frame(request_id, "cancelled", "the turn was cancelled")))
        except SlowConsumer as exc:
            await on_slow_consumer(exc)
        except Exception:
            logger.exception("turn %s for %s failed", self.turn_id, self.npc_id)
            failed = turn_error_frame(request_id, "internal", "the turn failed; try again")
            await quietly(session.send(failed))
        finally:
            self.answered.set()
            self.release()

    def release(self) -> None:
        """The NPC may take this session's next npc.say, and the turn stops counting against the
        caps (idempotent)."""
        self.session.turns.pop(self.request_id, None)
        if self.session.busy_npcs.get(self.npc_id) == self.request_id:
            del self.session.busy_npcs[self.npc_id]
        if not self.released:
            self.released = True
            in_background(turn_release(self.session.redis, owner=self.owner, slot=self.slot))

    async def turn_started(self, plan: TurnPlan) -> None:
        self.turn_id = plan.turn_id
        await self.session.send(
            {
                "type": "turn.start",
                "request_id": self.request_id,
                "turn_id": plan.turn_id,
                "npc_id": self.npc_id,
                "tier": plan.tier,
                "adapter": plan.adapter,
            }
        )
        self.answered.set()

    async def turn_delta(self, plan: TurnPlan, text: str) -> None:
        await self.session.send(
            {"type": "turn.delta", "request_id": self.request_id, "turn_id": plan.turn_id, "text": text}
        )

    async def turn_ended(self, outcome: TurnOutcome) -> None:
        self.end = {
            "type": "turn.end",
            "request_id": self.request_id,
            "turn_id": outcome.plan.turn_id,
            **{name: outcome.trace[name] for name in TURN_END_FIELDS},
            "memory": outcome.inputs.memory,
        }
        # Released before turn.end goes out, not after: sending also writes the replay buffer
        # to Redis, and a client that answers turn.end at once must not find the NPC busy.
        # (An uncontended session lock is taken without yielding, so this turn.end still gets
        # its seq before any frame of the next turn.) Memory and observers follow in the
        # background: a cancel can no longer reach them.
        self.release()
        await self.session.send(self.end)

    async def turn_observed(self, outcome: TurnOutcome) -> None:
        # Observers also see which lore chunks the turn used, with their scores.
        plan = outcome.plan
        lore = outcome.inputs.lore.used
        await observers_tell({**self.end, "npc_id": self.npc_id, "tier": plan.tier, "adapter": plan.adapter,
                              "lore": lore})  # fmt: skip


async def observers_tell(frame: dict[str, Any]) -> None:
    """A finished turn to the observers' group; losing one at capacity is acceptable there."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(OBSERVER_GROUP, {"type": "turn.finished", "frame": frame})
    except Exception as exc:  # noqa: BLE001 - observers must never break a player's turn
        logger.info("observers missed a turn: %s", exc)


async def quietly(awaitable: Any) -> None:
    """Best effort on the way out of a turn: the session may be over its window or gone."""
    try:
        await awaitable
    except (SlowConsumer, OSError) as exc:
        logger.info("could not report a turn's end: %s", exc)
