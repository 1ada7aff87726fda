"""Per-process caches, written once: an expiry, a bound, single-flight refreshes, and one registry
the test suite clears between tests (tests/conftest.py).

A module that keeps something in memory across calls (a worker's health, an NPC's turn context,
a tokenizer, a lore pack, the hot memory tier) declares a `ProcessCache` at module level, named
after where it lives (the name is for people reading a repr or a log):

    _health: ProcessCache[str, bool] = ProcessCache("inference.workers.health",
                                                    ttl_s=lambda: settings.WORKER_HEALTH_TTL_S)

- `ttl_s` is a number, a callable read at each look-up (a setting a test may change), or None
  (never stale). A stale entry is not dropped: `get` ignores it, while `entry` still returns it
  with `stale` set, for stale-while-revalidate callers that serve the last value while `refresh`
  reads a new one in the background.
- `maxsize` bounds the entries; past it the least recently used goes first.
- `refresh` is single flight: one task per key at a time, so that turns arriving together share
  one probe or one read instead of each starting its own.
- Thread-safe: the lore packs are read from Django's sync threads and the event loop at once.

Not for loaded resources that never go stale and cost seconds to load again (the embedding model,
memory.embeddings): clearing those between tests would only slow the suite.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")

Ttl = float | Callable[[], float] | None


@dataclass(frozen=True)
class CacheEntry(Generic[V]):
    value: V
    stored_at: float  # time.monotonic()
    stale: bool


class ProcessCache(Generic[K, V]):
    """A per-process cache with an expiry and a bound, registered for `caches_clear()`."""

    def __init__(self, name: str, *, ttl_s: Ttl = None, maxsize: int | None = None) -> None:
        self.name = name
        self._ttl_s = ttl_s
        self._maxsize = maxsize
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._tasks: dict[K, asyncio.Task[Any]] = {}
        self._lock = threading.Lock()
        cache_register(self)

    def _ttl(self) -> float | None:
        return self._ttl_s() if callable(self._ttl_s) else self._ttl_s

    def entry(self, key: K) -> CacheEntry[V] | None:
        """The entry for `key`, stale or not; None when there is none."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
        ttl = self._ttl()
        stale = ttl is not None and time.monotonic() - found[0] >= ttl
        return CacheEntry(found[1], found[0], stale)

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value for `key` if it is there and fresh, else `default`."""
        found = self.entry(key)
        return default if found is None or found.stale else found.value

    def set(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            if self._maxsize is not None and len(self._entries) > self._maxsize:
                self._evict()

    def _evict(self) -> None:
        """Drop stale entries, then the least recently used, down to maxsize (lock held)."""
        assert self._maxsize is not None
        ttl = self._ttl()
        if ttl is not None:
            now = time.monotonic()
            for key in [key for key, (at, _) in self._entries.items() if now - at >= ttl]:
                del self._entries[key]
        while len(self._entries) > self._maxsize:
            self._entries.popitem(last=False)

    def get_or_set(self, key: K, compute: Callable[[], V]) -> V:
        """The fresh value for `key`, or `compute()` stored under it (computed outside the lock:
        two threads may both compute a missing value once; the last one stays)."""
        found = self.entry(key)
        if found is not None and not found.stale:
            return found.value
        value = compute()
        self.set(key, value)
        return value

    def pop(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def pop_where(self, predicate: Callable[[K], bool]) -> int:
        """Drop every entry whose key matches; how many there were (a player forgotten)."""
        with self._lock:
            keys = [key for key in self._entries if predicate(key)]
            for key in keys:
                del self._entries[key]
            return len(keys)

    def clear(self) -> None:
        """Forget every entry and every refresh in flight (a task of a closed loop, in tests)."""
        with self._lock:
            self._entries.clear()
            self._tasks.clear()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def refresh(self, key: K, start: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        """The refresh of `key` in flight, or a new task from `start()` on the running loop: one
        at a time per key. `start`'s coroutine stores what it reads (with `set`) itself.

        A finished task, or one of another (closed) event loop, as in tests, does not count.
        """
        loop = asyncio.get_running_loop()
        task: asyncio.Task[T] | None = self._tasks.get(key)
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._tasks[key] = loop.create_task(start())
        return task

    def __repr__(self) -> str:
        return f"<ProcessCache {self.name}: {len(self)} entries>"


# Weak: a cache made for one test (a HotMemory of its own) goes away with it; a module's cache lives
# as long as its module.
_registry: weakref.WeakSet[ProcessCache[Any, Any]] = weakref.WeakSet()
_registry_lock = threading.Lock()


def cache_register(cache: ProcessCache[Any, Any]) -> None:
    """Add a cache to the registry (ProcessCache does it itself)."""
    with _registry_lock:
        _registry.add(cache)


def caches_registered() -> list[ProcessCache[Any, Any]]:
    """Every live registered cache (what `caches_clear` clears)."""
    with _registry_lock:
        return list(_registry)


def caches_clear() -> None:
    """Empty every registered cache of this process (tests, between each)."""
    for cache in caches_registered():
        cache.clear()
