"""One background task per key at a time: the refreshes behind stale-while-revalidate caches
(worker health in inference.workers, NPC turn contexts in inference.context)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def single_flight(
    tasks: dict[str, asyncio.Task[T]], key: str, start: Callable[[], Coroutine[Any, Any, T]]
) -> asyncio.Task[T]:
    """The task in flight for `key`, or a new one from `start()` on the running loop.

    A finished task, or one of another (closed) event loop, as in tests, does not count.
    """
    loop = asyncio.get_running_loop()
    task = tasks.get(key)
    if task is None or task.done() or task.get_loop() is not loop:
        task = tasks[key] = loop.create_task(start())
    return task
