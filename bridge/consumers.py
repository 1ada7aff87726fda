"""The game websocket `/ws/game/`: protocol v1 (docs/protocol.md).

The consumer authenticates, validates and rate-limits frames, and runs each `npc.say` as a
task that streams the turn's deltas straight to the session's socket. The channel layer
(which drops silently at capacity) only carries finished turns to observers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from bridge.auth import bearer_token, origin_allowed
from bridge.limits import TokenBucket
from bridge.protocol import (
    PROTOCOL_VERSION,
    Ack,
    NpcCancel,
    NpcSay,
    Ping,
    ProtocolError,
    SessionStart,
    WorldPositions,
    client_message_parse,
    error_frame,
    frame_dumps,
    turn_error_frame,
)
from bridge.sessions import GameSession, SlowConsumer, session_registry
from console.models import NPC, GameKeyScope
from console.services.keys import game_key_authenticate
from inference.context import TurnContext, turn_context_cached
from inference.prompts import Turn
from inference.turns import turn_run
from inference.workers import workers_healthy

logger = logging.getLogger(__name__)

# Close codes (the 4xxx range is the application's).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_SLOW_CONSUMER = 4408

# Finished turns for observers (ops and playtest pages), through the channel layer.
OBSERVER_GROUP = "observe.turns"


class GameConsumer(AsyncWebsocketConsumer):
    key_id: int
    key_prefix: str
    key_scopes: frozenset[str]
    session: GameSession | None

    async def connect(self) -> None:
        self.session = None
        if not origin_allowed(dict(self.scope)):
            logger.warning("game socket refused: foreign origin")
            await self.close(code=CLOSE_FORBIDDEN_ORIGIN)
            return
        secret = bearer_token(dict(self.scope))
        key = await database_sync_to_async(game_key_authenticate)(secret=secret) if secret else None
        if key is None:
            # The secret is never logged, not even a wrong one.
            logger.warning("game socket refused: %s game key", "invalid" if secret else "no")
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.key_id, self.key_prefix, self.key_scopes = key.pk, key.prefix, frozenset(key.scopes)
        self.frames = TokenBucket(settings.BRIDGE_FRAMES_PER_S, settings.BRIDGE_FRAMES_BURST)
        self.says = TokenBucket(settings.BRIDGE_SAYS_PER_S, settings.BRIDGE_SAYS_BURST)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            # Its turns keep running for BRIDGE_RESUME_GRACE_S, buffering frames for a resume.
            self.session.detach(self._sink)

    async def _sink(self, text: str) -> None:
        await self.send(text_data=text)

    async def _reply(self, frame: dict[str, Any]) -> None:
        """A frame to this socket: through the session (numbered, buffered) once there is one."""
        if self.session is None:
            # Before session.start there is nothing to resume: seq 0, not buffered.
            await self.send(text_data=frame_dumps({**frame, "seq": 0}))
            return
        try:
            await self.session.send(frame)
        except SlowConsumer as exc:
            await self._slow_consumer(exc)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        request_id = None
        try:
            wait = self.frames.take()
            if wait:
                raise ProtocolError("rate_limited", "over the frame rate limit", retry_after=round(wait, 3))
            if text_data is None:
                raise ProtocolError("binary_frame", "binary frames are not accepted; send JSON text frames")
            message = client_message_parse(text_data, max_text_chars=settings.BRIDGE_MAX_TEXT_CHARS)
            request_id = getattr(message, "request_id", None)
            await self._dispatch(message)
        except ProtocolError as exc:
            frame = error_frame(exc.code, exc.message, request_id=exc.request_id or request_id, **exc.extra)
            await self._reply(frame)

    async def _dispatch(self, message: Any) -> None:
        if isinstance(message, Ping):
            await self._reply({"type": "pong"})
        elif isinstance(message, SessionStart):
            await self._session_start(message)
        elif self.session is None:
            raise ProtocolError("not_started", f"send session.start before {message.type}")
        elif isinstance(message, Ack):
            await self.session.ack(message.seq)
        elif isinstance(message, NpcSay):
            await self._npc_say(self.session, message)
        elif isinstance(message, NpcCancel):
            task = self.session.turns.get(message.request_id)
            if task is None:
                raise ProtocolError(
                    "unknown_request", f"no turn in flight has request_id {message.request_id}"
                )
            task.cancel()  # the turn task reports turn.error `cancelled`
        elif isinstance(message, WorldPositions):
            self._require_scope(GameKeyScope.POSITIONS, message.type)
            # The tiers service consumes positions (tiers issue); validated and accepted here.
            self.session.positions = message

    def _require_scope(self, scope: str, what: str) -> None:
        if scope not in self.key_scopes:
            raise ProtocolError("forbidden", f"{what} needs a game key with the {scope!r} scope")

    async def _session_start(self, message: SessionStart) -> None:
        if self.session is not None:
            raise ProtocolError(
                "bad_frame", f"session {self.session.session_id} already started on this socket"
            )
        registry = session_registry()
        replayed = 0
        if message.resume is None:
            session = await registry.start(player_id=message.player_id, key_id=self.key_id)
            session.sink = self._sink
        else:
            session = await registry.resume(
                session_id=message.resume.session_id, player_id=message.player_id, key_id=self.key_id
            )
            replayed = await session.attach(self._sink, last_seq=message.resume.last_seq)
        self.session = session
        await self._reply(
            {
                "type": "session.ready",
                "session_id": session.session_id,
                "protocol": PROTOCOL_VERSION,
                "resumed": message.resume is not None,
                "replayed": replayed,
            }
        )

    async def _npc_say(self, session: GameSession, message: NpcSay) -> None:
        self._require_scope(GameKeyScope.PLAY, message.type)
        wait = self.says.take()
        if wait:
            raise ProtocolError("rate_limited", "over the npc.say rate limit", retry_after=round(wait, 3))
        if message.request_id in session.turns:
            raise ProtocolError("duplicate_request", f"request_id {message.request_id} is already in flight")
        if message.npc_id in session.busy_npcs:
            await self._reply(
                turn_error_frame(
                    message.request_id,
                    "busy",
                    f"{message.npc_id} is answering request {session.busy_npcs[message.npc_id]}; "
                    "wait for its turn.end or send npc.cancel",
                )
            )
            return
        try:
            context = await turn_context_cached(message.npc_id)
        except NPC.DoesNotExist:
            raise ProtocolError("unknown_npc", f"no NPC has npc_id {message.npc_id!r}") from None
        session.busy_npcs[message.npc_id] = message.request_id
        task = asyncio.get_running_loop().create_task(self._turn(session, message, context))
        session.turns[message.request_id] = task

    async def _turn(self, session: GameSession, message: NpcSay, context: TurnContext) -> None:
        request_id, npc_id = message.request_id, message.npc_id
        turn_id = "t_" + secrets.token_urlsafe(9)
        tier = session.tiers.get(npc_id, settings.BRIDGE_DEFAULT_TIER)

        async def delta(text: str) -> None:
            await session.send(
                {"type": "turn.delta", "request_id": request_id, "turn_id": turn_id, "text": text}
            )

        try:
            await session.send(
                {
                    "type": "turn.start",
                    "request_id": request_id,
                    "turn_id": turn_id,
                    "npc_id": npc_id,
                    "tier": tier,
                    "adapter": context.routes.get("dialogue_style"),
                }
            )
            history = session.history.setdefault(npc_id, [])
            result = await turn_run(
                context=context,
                player_text=message.text,
                workers=await workers_healthy(),
                history=history[-settings.BRIDGE_HISTORY_TURNS :],
                tier=tier,
                on_delta=delta,
            )
            history.append(Turn(player=message.text, npc=result.text))
            del history[: -settings.BRIDGE_HISTORY_TURNS]
            end = {
                "type": "turn.end",
                "request_id": request_id,
                "turn_id": turn_id,
                "text": result.text,
                "emotion": result.emotion,
                "action": result.action,
                "usage": {
                    "prompt_tokens": result.usage.prompt_tokens,
                    "completion_tokens": result.usage.completion_tokens,
                },
                "timing": {"ttft_ms": _ms(result.ttft_ms), "total_ms": _ms(result.total_ms)},
                "fallbacks": result.fallbacks,
            }
            await session.send(end)
            await _observers_tell(
                {**end, "npc_id": npc_id, "tier": tier, "adapter": context.routes.get("dialogue_style")}
            )
        except asyncio.CancelledError:
            # npc.cancel, or the session expired: closing the engine stream aborted generation.
            await _quietly(session.send(turn_error_frame(request_id, "cancelled", "the turn was cancelled")))
        except SlowConsumer as exc:
            await self._slow_consumer(exc)
        except Exception:
            logger.exception("turn %s for %s failed", turn_id, npc_id)
            await _quietly(
                session.send(turn_error_frame(request_id, "internal", "the turn failed; try again"))
            )
        finally:
            session.turns.pop(request_id, None)
            if session.busy_npcs.get(npc_id) == request_id:
                del session.busy_npcs[npc_id]

    async def _slow_consumer(self, exc: SlowConsumer) -> None:
        logger.warning("closing a game socket (key %s…): client not reading, %s", self.key_prefix, exc)
        if self.session is not None:
            for task in self.session.turns.values():
                task.cancel()
            self.session.detach(self._sink)
        await self.close(code=CLOSE_SLOW_CONSUMER)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def _quietly(awaitable: Any) -> None:
    """Best effort on the way out of a turn: the session may be over its window or gone."""
    try:
        await awaitable
    except (SlowConsumer, OSError) as exc:
        logger.info("could not report a turn's end: %s", exc)


async def _observers_tell(frame: dict[str, Any]) -> None:
    """A finished turn to the observers' group; losing one at capacity is acceptable there."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(OBSERVER_GROUP, {"type": "turn.finished", "frame": frame})
    except Exception as exc:  # noqa: BLE001 - observers must never break a player's turn
        logger.info("observers missed a turn: %s", exc)
