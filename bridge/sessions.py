"""Game sessions: per-session sequence numbers, the replay buffer in Redis, resume.

A session outlives its socket. Every server frame gets the next `seq` and goes to the socket
attached now (if any) and to a bounded list in Redis. A client that reconnects with
`session.start {resume: {session_id, last_seq}}` is sent every buffered frame after last_seq,
then the live ones: turns still streaming continue on the new socket. Frames the client
acknowledged (`ack`, or last_seq on resume) leave the buffer, so the buffer is exactly the
client's unacknowledged window; a client that lets it grow past BRIDGE_MAX_UNACKED frames has
stopped reading and is disconnected (memory stays bounded).

Sessions live in the Daphne process that started them (turn tasks run there); Redis holds
what a resume needs. Behind a load balancer, route a session's reconnects to the same process
(sticky sessions); a resume that lands elsewhere still gets every buffered frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from bridge.protocol import ProtocolError, frame_dumps
from console.redis_clients import redis_async_pool, redis_text

logger = logging.getLogger(__name__)

FrameSink = Callable[[str], Awaitable[None]]


class SlowConsumer(Exception):
    """The client's unacknowledged window is over the bound."""


def _keys(session_id: str) -> tuple[str, str]:
    return f"bridge:session:{session_id}", f"bridge:replay:{session_id}"


@dataclass(eq=False)
class GameSession:
    """One player's session: owned by this process, attached to at most one socket at a time."""

    session_id: str
    player_id: str
    # Who started it: "key:<pk>" for a game key, "user:<pk>" for a console user (playtest).
    owner: str
    redis: Redis
    seq: int = 0
    acked: int = 0
    sink: FrameSink | None = None
    turns: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # request_id -> task
    busy_npcs: dict[str, str] = field(default_factory=dict)  # npc slug -> request_id
    talked: set[str] = field(default_factory=set)  # NPCs spoken to since the socket attached
    remembering: set[asyncio.Task[None]] = field(default_factory=set)  # turns being written to memory
    detached_at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> int:
        """Number `frame`, send it to the attached socket and buffer it for a resume."""
        async with self._lock:
            self.seq += 1
            frame = {**frame, "seq": self.seq}
            text = frame_dumps(frame)
            if self.sink is not None:
                await self.sink(text)
            await self._buffer(text)
            if self.seq - self.acked > settings.BRIDGE_MAX_UNACKED:
                raise SlowConsumer(f"{self.seq - self.acked} frames unacknowledged")
            return self.seq

    async def _buffer(self, text: str) -> None:
        meta, replay = _keys(self.session_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(replay, text)
                # One more than the window: a client over it is disconnected anyway.
                pipe.ltrim(replay, -(settings.BRIDGE_MAX_UNACKED + 1), -1)
                # The whole record, not only seq: it may have expired while the socket was idle.
                pipe.hset(meta, mapping=self.record())
                pipe.expire(replay, settings.BRIDGE_SESSION_TTL_S)
                pipe.expire(meta, settings.BRIDGE_SESSION_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            # The live stream matters more than its replay copy: keep talking, log the gap.
            logger.error("session %s: frame %d not buffered for resume: %s", self.session_id, self.seq, exc)

    def record(self) -> dict[FieldT, EncodableT]:
        """What Redis keeps of the session for a resume."""
        return {"player_id": self.player_id, "owner": self.owner, "seq": self.seq}

    async def ack(self, seq: int) -> None:
        """Frames up to `seq` arrived; drop them from the buffer."""
        if seq <= self.acked:
            return
        self.acked = min(seq, self.seq)
        _, replay = _keys(self.session_id)
        # The buffer holds frames acked+1..seq in order; trim from the left by how many were acked.
        async with self._lock:
            length = await self.redis.llen(replay)
            keep = self.seq - self.acked
            if length > keep:
                await self.redis.ltrim(replay, length - keep, -1)

    async def attach(self, sink: FrameSink, *, last_seq: int) -> int:
        """Make `sink` the session's socket after replaying every frame after `last_seq`."""
        async with self._lock:
            _, replay = _keys(self.session_id)
            frames = [json.loads(raw) for raw in await self.redis.lrange(replay, 0, -1)]
            missed = [frame for frame in frames if frame["seq"] > last_seq]
            oldest = missed[0]["seq"] if missed else self.seq + 1
            if last_seq < self.seq and oldest > last_seq + 1:
                raise ProtocolError(
                    "resume_gap", f"frames {last_seq + 1}..{oldest - 1} are no longer buffered"
                )
            if last_seq > self.seq:
                raise ProtocolError("bad_frame", f"last_seq {last_seq} is ahead of the session's {self.seq}")
            for frame in missed:
                await sink(frame_dumps(frame))
            self.sink = sink
            self.detached_at = None
            self.acked = max(self.acked, last_seq)
            return len(missed)

    def detach(self, sink: FrameSink) -> None:
        if self.sink is sink:
            self.sink = None
            self.detached_at = asyncio.get_running_loop().time()


class SessionRegistry:
    """The sessions of this process, and their records in Redis."""

    def __init__(self) -> None:
        self._sessions: dict[str, GameSession] = {}
        self._redis: Redis | None = None
        self._reaper: asyncio.Task[None] | None = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            # A blocking pool: when every connection is busy a command waits for one instead of
            # failing (redis-py's default pool raises at 100; bench.clients hit it at 500 sockets).
            # Timeouts and health checks: console.redis_clients.
            pool = redis_async_pool(max_connections=settings.BRIDGE_REDIS_CONNECTIONS, timeout=10)
            self._redis = Redis(connection_pool=pool)
        return self._redis

    async def start(self, *, player_id: str, owner: str) -> GameSession:
        session_id = "s_" + secrets.token_urlsafe(16)
        session = GameSession(session_id=session_id, player_id=player_id, owner=owner, redis=self.redis)
        meta, _ = _keys(session_id)
        await self.redis.hset(meta, mapping=session.record())
        await self.redis.expire(meta, settings.BRIDGE_SESSION_TTL_S)
        self._sessions[session_id] = session
        self._reaper_ensure()
        return session

    async def resume(self, *, session_id: str, player_id: str, owner: str) -> GameSession:
        """The session to resume; only the owner and player that started it may resume it."""
        session = self._sessions.get(session_id)
        if session is None:
            meta, _ = _keys(session_id)
            stored = await self.redis.hgetall(meta)
            if b"player_id" not in stored or b"owner" not in stored:
                raise ProtocolError("unknown_session", f"session {session_id} is unknown or expired")
            # Started by another process: its frames are in Redis, its live turns stay there.
            session = GameSession(
                session_id=session_id,
                player_id=redis_text(stored[b"player_id"]),
                owner=redis_text(stored[b"owner"]),
                redis=self.redis,
                seq=int(stored[b"seq"]),
            )
        if session.owner != owner or session.player_id != player_id:
            # The same answer as for an unknown id: a session id is not a capability to probe.
            raise ProtocolError("unknown_session", f"session {session_id} is unknown or expired")
        self._sessions[session_id] = session
        return session

    def _reaper_ensure(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Cancel the turns of sessions nobody reattached to within the grace period."""
        while self._sessions:
            await asyncio.sleep(1.0)
            now = asyncio.get_running_loop().time()
            for session_id, session in list(self._sessions.items()):
                if (
                    session.detached_at is not None
                    and now - session.detached_at > settings.BRIDGE_RESUME_GRACE_S
                ):
                    for task in session.turns.values():
                        task.cancel()
                    del self._sessions[session_id]

    def __len__(self) -> int:
        return len(self._sessions)


# Per event loop: Daphne runs one loop; tests run one per test (a Redis connection belongs to its loop).
_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SessionRegistry] = (
    weakref.WeakKeyDictionary()
)


def session_registry() -> SessionRegistry:
    loop = asyncio.get_running_loop()
    registry = _registries.get(loop)
    if registry is None:
        registry = _registries[loop] = SessionRegistry()
    return registry
