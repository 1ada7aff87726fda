"""Limits on what one client can make the server do.

Per connection, a token bucket per kind of frame. Hand-written rather than a library: it is
twelve lines, lives in one consumer's memory (no shared store to call on every frame), and must
answer how long to wait (`retry_after`). Per key and per deployment, caps on open sockets and
turns in flight, counted in Redis (below).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> float:
        """0.0 when a frame may pass now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


# --- Shared caps, counted in Redis across every bridge process --------------------------------
# Per-socket buckets do not stop a key holder who opens many sockets, so a key's open sockets and
# its turns in flight are capped in Redis. Each cap is a sorted set of members scored by when they
# were last seen: a Daphne process that dies without cleaning up leaves members that go stale and
# stop counting, instead of a counter that stays high for good.

CONNECTIONS_KEY = "bridge:conns:{owner}"
TURNS_KEY = "bridge:turns:{owner}"
ALL_TURNS_KEY = "bridge:turns:all"

# KEYS: the sets to admit into (each with its cap in ARGV[3+i]); ARGV: now, stale before, member.
# Returns 0 when admitted into every set, else the 1-based index of the first set at its cap.
# One script, so two sockets racing for the last place cannot both take it.
_ADMIT = """
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then return i end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[1], ARGV[3])
  redis.call('EXPIRE', key, ARGV[3 + #KEYS + 1])
end
return 0
"""


async def admit(redis: Redis, *, caps: dict[str, int], member: str, stale_s: float) -> str | None:
    """Add `member` to every set of `caps` (set key -> cap) unless one is full: None when admitted,
    else the key of the first full set. Members older than `stale_s` no longer count."""
    now = time.time()
    keys = list(caps)
    full = await redis.eval(
        _ADMIT, len(keys), *keys, now, now - stale_s, member, *caps.values(), math.ceil(stale_s) + 60
    )
    return None if int(full) == 0 else keys[int(full) - 1]


async def admit_refresh(redis: Redis, *, keys: list[str], member: str) -> None:
    """`member` is still there: it keeps counting (the sets' members go stale otherwise)."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zadd(key, {member: time.time()}, xx=True)
        await pipe.execute()


async def admit_release(redis: Redis, *, keys: list[str], member: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zrem(key, member)
        await pipe.execute()


async def connection_admit(redis: Redis, *, owner: str, member: str) -> tuple[list[str], str | None]:
    """Count socket `member` against its key's cap: the sets it now counts in, and None; or why it
    may not stay open."""
    key = CONNECTIONS_KEY.format(owner=owner)
    cap = settings.BRIDGE_MAX_CONNECTIONS_PER_KEY
    try:
        full = await admit(
            redis, caps={key: cap}, member=member, stale_s=3 * settings.BRIDGE_CALLER_RECHECK_S
        )
    except RedisError as exc:
        # Sessions need Redis anyway; the cap is not worth refusing a connection over.
        logger.warning("connection cap not checked: %s", exc)
        return [], None
    if full is None:
        return [key], None
    return [], f"this key already holds {cap} open sockets (BRIDGE_MAX_CONNECTIONS_PER_KEY); close some"


async def connection_refresh(redis: Redis, *, keys: list[str], member: str) -> None:
    """Socket `member` is still open: it keeps counting against its key's cap."""
    try:
        await admit_refresh(redis, keys=keys, member=member)
    except RedisError as exc:
        logger.info("connection cap not refreshed: %s", exc)


async def connection_release(redis: Redis, *, keys: list[str], member: str) -> None:
    """Socket `member` closed: it stops counting against its key's cap."""
    try:
        await admit_release(redis, keys=keys, member=member)
    except RedisError as exc:  # the member goes stale and stops counting
        logger.info("connection cap not released: %s", exc)


def turn_caps(owner: str) -> dict[str, int]:
    """The sets a turn counts in, with their caps: its key's, and every worker's queue."""
    workers = max(1, len(settings.INFERENCE_WORKERS))
    return {
        TURNS_KEY.format(owner=owner): settings.BRIDGE_MAX_TURNS_PER_KEY,
        ALL_TURNS_KEY: settings.BRIDGE_MAX_TURNS_PER_WORKER * workers,
    }


async def turn_admit(redis: Redis, *, owner: str, slot: str) -> str | None:
    """None when the turn may run, else why it is `busy` (a cap on turns in flight is reached)."""
    caps = turn_caps(owner)
    try:
        full = await admit(redis, caps=caps, member=slot, stale_s=settings.BRIDGE_TURN_STALE_S)
    except RedisError as exc:
        logger.warning("turn caps not checked: %s", exc)  # the turn runs without its memory anyway
        return None
    if full is None:
        return None
    if full == ALL_TURNS_KEY:
        return f"the NPC workers are at capacity ({caps[full]} turns in flight); try again in a few seconds"
    return f"this key has {caps[full]} turns in flight (BRIDGE_MAX_TURNS_PER_KEY); wait for some to end"


async def turn_release(redis: Redis, *, owner: str, slot: str) -> None:
    """The turn in `slot` ended: it stops counting against its caps."""
    try:
        await admit_release(redis, keys=list(turn_caps(owner)), member=slot)
    except RedisError as exc:  # the slot goes stale after BRIDGE_TURN_STALE_S and stops counting
        logger.info("turn slot %s not released: %s", slot, exc)
