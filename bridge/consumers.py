"""The game websocket `/ws/game/`: protocol v1 (docs/protocol.md).

The consumer is transport: it authenticates, validates and rate-limits frames, dispatches
them, and owns the session's I/O. Each `npc.say` runs as a task that takes the turn through the
turn pipeline (inference.turn) and streams its deltas straight to the session's socket
(bridge.turn_io); quest and positions frames are applied by bridge.world_frames. The channel
layer (which drops silently at capacity) only carries finished turns to observers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from bridge.auth import (
    Caller,
    bearer_token,
    caller_authenticate,
    caller_still_allowed,
    origin_allowed,
    player_claim_refusal,
)
from bridge.limits import TokenBucket, connection_admit, connection_refresh, connection_release
from bridge.protocol import (
    PROTOCOL_VERSION,
    Ack,
    NpcCancel,
    NpcQuest,
    NpcSay,
    Ping,
    ProtocolError,
    SessionStart,
    WorldPositions,
    client_message_parse,
    error_frame,
    frame_dumps,
)
from bridge.sessions import GameSession, SlowConsumer, session_registry
from bridge.turn_io import SocketTurn, turn_check
from bridge.world_frames import positions_apply, quest_apply
from console.models import GameKeyScope
from console.services.keys import caller_group
from inference.turn.background import in_background
from inference.turn.remember import session_memory_consolidate

logger = logging.getLogger(__name__)

# How long an npc.say holds the socket's next frame back for its turn.start.
TURN_START_WAIT_S = 5.0

# Close codes (the 4xxx range is the application's).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_SLOW_CONSUMER = 4408
CLOSE_TOO_MANY_CONNECTIONS = 4429


class GameConsumer(AsyncWebsocketConsumer):
    caller: Caller
    session: GameSession | None

    async def connect(self) -> None:
        self.session = None
        self._watch: asyncio.Task[None] | None = None
        self._admitted: list[str] = []  # the connection sets this socket counts in (bridge.limits)
        self._groups: list[str] = []
        if not origin_allowed(dict(self.scope)):
            logger.warning("game socket refused: foreign origin")
            await self.close(code=CLOSE_FORBIDDEN_ORIGIN)
            return
        caller = await database_sync_to_async(caller_authenticate)(dict(self.scope))
        if caller is None:
            # The secret is never logged, not even a wrong one.
            logger.warning(
                "game socket refused: %s",
                "invalid game key" if bearer_token(dict(self.scope)) else "no credential",
            )
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.caller = caller
        self.frames = TokenBucket(settings.BRIDGE_FRAMES_PER_S, settings.BRIDGE_FRAMES_BURST)
        self.says = TokenBucket(settings.BRIDGE_SAYS_PER_S, settings.BRIDGE_SAYS_BURST)
        self.positions = TokenBucket(settings.BRIDGE_POSITIONS_PER_S, settings.BRIDGE_POSITIONS_BURST)
        self.socket_id = "c_" + secrets.token_urlsafe(12)
        await self.accept()
        if not await self._connection_admit():
            return
        # Revoking the key or the console user closes this socket (console.services.keys).
        if self.channel_layer is not None:
            group = caller_group(caller.owner)
            try:
                await self.channel_layer.group_add(group, self.channel_name)
                self._groups.append(group)
            except Exception as exc:  # noqa: BLE001 - the periodic re-check still closes a revoked socket
                logger.warning("revocations will reach this socket late: %s", exc)
        self._watch = asyncio.get_running_loop().create_task(self._caller_watch())

    async def _connection_admit(self) -> bool:
        """Count this socket against its key's cap; over it, say so and close (after accept, so
        the client learns why: a close before accept is a bare HTTP 403)."""
        admitted = connection_admit(session_registry().redis, owner=self.caller.owner, member=self.socket_id)
        self._admitted, refusal = await admitted
        if refusal is None:
            return True
        logger.warning("game socket refused: %s: %s", self.caller.label, refusal)
        await self.send(text_data=frame_dumps({**error_frame("too_many_connections", refusal), "seq": 0}))
        await self.close(code=CLOSE_TOO_MANY_CONNECTIONS)
        return False

    async def _caller_watch(self) -> None:
        """Every BRIDGE_CALLER_RECHECK_S: is the key (or console user) still allowed? And this
        socket still counts against its key's connection cap."""
        redis = session_registry().redis
        while True:
            await asyncio.sleep(settings.BRIDGE_CALLER_RECHECK_S)
            try:
                allowed = await database_sync_to_async(caller_still_allowed)(self.caller)
            except Exception as exc:  # noqa: BLE001 - Postgres down: sockets keep talking (invariant 1)
                logger.info("could not re-check %s: %s", self.caller.label, exc)
                allowed = True
            if not allowed:
                await self._revoked()
                return
            await connection_refresh(redis, keys=self._admitted, member=self.socket_id)

    async def caller_revoked(self, event: dict[str, Any]) -> None:
        """The channel layer's message from console.services.keys.caller_disconnect."""
        await self._revoked()

    async def _revoked(self) -> None:
        logger.warning("closing a game socket (%s): its key or account was revoked", self.caller.label)
        try:
            await self._reply(error_frame("revoked", "this key or account was revoked; the socket closes"))
        except Exception as exc:  # noqa: BLE001 - the socket closes whatever happens to the notice
            logger.info("could not tell a revoked client why: %s", exc)
        if self.session is not None:
            for task in self.session.turns.values():
                task.cancel()
        await self.close(code=CLOSE_UNAUTHORIZED)

    async def disconnect(self, code: int) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for group in self._groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # noqa: BLE001 - the group's own expiry drops it later
                logger.info("could not leave %s: %s", group, exc)
        if self._admitted:
            await connection_release(session_registry().redis, keys=self._admitted, member=self.socket_id)
        if self.session is not None:
            # The player left (or lost the connection): what they said becomes memory now.
            in_background(session_memory_consolidate(session=self.session))
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
            await self._reply_safely(frame)
        except Exception:
            # A fault of ours must not close the socket (Channels would): the client learns the
            # frame was not applied, and the next frame is served as usual.
            logger.exception("a %s frame from %s failed", type(text_data).__name__, self.caller.label)
            frame = error_frame("internal", "the server failed on this frame; it was not applied")
            await self._reply_safely({**frame, **({"request_id": request_id} if request_id else {})})

    async def _reply_safely(self, frame: dict[str, Any]) -> None:
        """An error frame, if the session store and the socket let it through."""
        try:
            await self._reply(frame)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: the socket must survive
            logger.warning("could not send an %s frame: %s", frame.get("code"), exc)

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
            if (task := self.session.turns.get(request := message.request_id)) is None:
                raise ProtocolError("unknown_request", f"no turn in flight has request_id {request}")
            task.cancel()  # the turn task reports turn.error `cancelled`
        elif isinstance(message, NpcQuest):
            self._require_scope(GameKeyScope.QUESTS, message.type)
            await self._reply(await quest_apply(self.session, message))
        elif isinstance(message, WorldPositions):
            self._require_scope(GameKeyScope.POSITIONS, message.type)
            wait = self.positions.take()
            if wait:
                raise ProtocolError(
                    "rate_limited", "over the world.positions rate limit", retry_after=round(wait, 3)
                )
            for frame in await positions_apply(self.session, message):
                await self._reply(frame)

    def _require_scope(self, scope: str, what: str) -> None:
        if scope not in self.caller.scopes:
            raise ProtocolError("forbidden", f"{what} needs a game key with the {str(scope)!r} scope")

    async def _session_start(self, message: SessionStart) -> None:
        if self.session is not None:
            raise ProtocolError(
                "bad_frame", f"session {self.session.session_id} already started on this socket"
            )
        refusal = await database_sync_to_async(player_claim_refusal)(
            caller=self.caller, player_id=message.player_id, player_token=message.player_token
        )
        if refusal is not None:
            raise ProtocolError("forbidden", refusal)
        try:
            await self._session_open(message)
        except RedisError as exc:
            logger.error("session.start failed: the session store did not answer: %s", exc)
            raise ProtocolError(
                "unavailable", "the session store did not answer; send session.start again"
            ) from None

    async def _session_open(self, message: SessionStart) -> None:
        registry = session_registry()
        replayed = 0
        if message.resume is None:
            session = await registry.start(player_id=message.player_id, owner=self.caller.owner)
            session.sink = self._sink
        else:
            session = await registry.resume(
                session_id=message.resume.session_id, player_id=message.player_id, owner=self.caller.owner
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
        slot = f"{session.session_id}:{message.request_id}"  # its place under the caps
        checked = await turn_check(session, message, owner=self.caller.owner, slot=slot)
        if isinstance(checked, dict):
            await self._reply(checked)  # refused: the turn.error says why
            return
        session.busy_npcs[message.npc_id] = message.request_id
        turn = SocketTurn(session, message=message, owner=self.caller.owner, slot=slot)
        playing = turn.play(checked, on_slow_consumer=self._slow_consumer)
        task = asyncio.get_running_loop().create_task(playing)
        session.turns[message.request_id] = task
        # The next frame waits for turn.start (a Redis round trip for the tier): a client sees
        # its npc.say answered before anything it sent later. Bounded, so a stuck store cannot
        # stall the socket: the turn itself still ends with turn.end or turn.error.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(turn.answered.wait(), timeout=TURN_START_WAIT_S)

    async def _slow_consumer(self, exc: SlowConsumer) -> None:
        logger.warning("closing a game socket (%s): client not reading, %s", self.caller.label, exc)
        if self.session is not None:
            for task in self.session.turns.values():
                task.cancel()
            self.session.detach(self._sink)
        await self.close(code=CLOSE_SLOW_CONSUMER)
