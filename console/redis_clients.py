"""Every Redis client of the project is built here, with the same timeouts and health check.

Without them a client waits as long as the kernel lets it: a Redis that stops answering (a
failover, a half-open TCP connection after a network blip) hangs a turn, a Celery task or an
admin page instead of failing it, and a pooled connection that died while idle is found dead
only by the command that needs it. redis-py 8 sets 5 s socket timeouts by default, but earlier
versions set none and a pool never checks an idle connection: these are ours, explicit, and set
from the environment (REDIS_SOCKET_TIMEOUT_S, REDIS_CONNECT_TIMEOUT_S, REDIS_HEALTH_CHECK_S).

The one exception is the channel layer (CHANNEL_LAYERS in the settings): channels_redis waits
for a socket's next message with a blocking pop that may outlast any socket timeout, which
would then drop idle consumers, so its connections keep `socket_timeout: None`.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from django.conf import settings


def redis_text(value: bytes | str) -> str:
    """A Redis reply as text (our clients do not decode responses: some values are binary)."""
    return value.decode() if isinstance(value, bytes) else value


def redis_options(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments every client gets; a caller may tighten one (health: 2 s)."""
    return {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT_S,
        # A connection idle this long is PINGed before its next command: a dead one is replaced
        # there, not discovered by a turn.
        "health_check_interval": settings.REDIS_HEALTH_CHECK_S,
        **overrides,
    }


def redis_sync(url: str | None = None, **overrides: Any) -> redis.Redis:
    """A synchronous client (Celery tasks, admin pages, threads) on REDIS_URL or `url`."""
    return redis.Redis.from_url(url or settings.REDIS_URL, **redis_options(**overrides))


def redis_async(url: str | None = None, **overrides: Any) -> redis.asyncio.Redis:
    """An asyncio client on REDIS_URL or `url`."""
    return redis.asyncio.Redis.from_url(url or settings.REDIS_URL, **redis_options(**overrides))


def redis_async_pool(
    *, max_connections: int, timeout: float, url: str | None = None
) -> redis.asyncio.BlockingConnectionPool:
    """A blocking asyncio pool: when every connection is busy a command waits up to `timeout`
    for one instead of failing."""
    return redis.asyncio.BlockingConnectionPool.from_url(
        url or settings.REDIS_URL, max_connections=max_connections, timeout=timeout, **redis_options()
    )
