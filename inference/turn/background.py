"""Work a turn starts and does not wait for: writes after the player has the reply, and requests
to rebuild what Redis lacks (a pair's memory, an NPC's lore pack, a consolidation)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# Background tasks are referenced until they finish (the event loop keeps only weak references).
_background: set[asyncio.Task[None]] = set()


def in_background(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run `coroutine` on the running loop without waiting for it, and keep it referenced."""
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


# One queued task per (task, NPC, player) at a time: SET NX with this prefix, for
# BRIDGE_MEMORY_TASK_ONCE_S. Cycling connections or positions frames used to queue a consolidation per
# disconnect and a rebuild per frame; the tasks are idempotent, so a skipped duplicate loses nothing.
QUEUED_ONCE_KEY = "bridge:queued:{name}:{args}"


def enqueue_once(redis: Redis, task: Any, *args: str) -> None:
    """Queue the Celery `task(*args)` unless the same call was queued within BRIDGE_MEMORY_TASK_ONCE_S."""

    async def enqueue() -> None:
        key = QUEUED_ONCE_KEY.format(name=task.name, args=":".join(args))
        try:
            first = await redis.set(key, "1", nx=True, ex=settings.BRIDGE_MEMORY_TASK_ONCE_S)
        except RedisError as exc:
            logger.info("queued-once check skipped: %s", exc)
            first = True
        if not first:
            return
        try:
            await asyncio.to_thread(task.delay, *args)
        except Exception as exc:  # noqa: BLE001 - background memory work must never fail a turn
            logger.warning("could not queue %s%s: %s", task.name, args, exc)
            with contextlib.suppress(RedisError):
                await redis.delete(key)  # the next trigger may try again

    in_background(enqueue())
