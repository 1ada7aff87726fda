"""console.caches: the per-process cache every module-level cache uses (expiry, bound, single
flight, one registry the suite clears between tests)."""

from __future__ import annotations

import asyncio
import time

from console.caches import ProcessCache, caches_clear, caches_registered


def test_a_stale_entry_is_served_only_to_callers_that_ask_for_it():
    # Given a cache whose expiry is read from a value a test may change (like a setting)
    ttl = {"s": 60.0}
    cache: ProcessCache[str, int] = ProcessCache("tests.caches.stale", ttl_s=lambda: ttl["s"])
    cache.set("a", 1)
    assert cache.get("a") == 1
    fresh = cache.entry("a")
    assert fresh is not None
    assert not fresh.stale

    # When the expiry shrinks below the entry's age
    ttl["s"] = 0.0

    # Then `get` no longer returns it, while `entry` still does, marked stale (stale-while-revalidate)
    assert cache.get("a") is None
    entry = cache.entry("a")
    assert entry is not None
    assert (entry.stale, entry.value) == (True, 1)
    assert "a" in cache


def test_get_or_set_computes_once_while_fresh_and_again_once_stale():
    cache: ProcessCache[str, float] = ProcessCache("tests.caches.compute", ttl_s=0.2)
    calls: list[str] = []

    def compute() -> float:
        calls.append("x")
        return time.monotonic()

    first = cache.get_or_set("k", compute)
    assert cache.get_or_set("k", compute) == first
    time.sleep(0.25)
    assert cache.get_or_set("k", compute) != first
    assert len(calls) == 2


def test_a_bounded_cache_drops_the_least_recently_used_entry_first():
    cache: ProcessCache[str, int] = ProcessCache("tests.caches.bounded", maxsize=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")  # a is now more recent than b

    cache.set("c", 3)

    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert len(cache) == 2


def test_refreshes_of_one_key_share_one_task():
    cache: ProcessCache[str, str] = ProcessCache("tests.caches.single_flight")
    started: list[str] = []

    async def read(key: str) -> str:
        started.append(key)
        await asyncio.sleep(0.05)
        cache.set(key, f"value of {key}")
        return key

    async def main() -> tuple[bool, bool, list[str]]:
        first = cache.refresh("a", lambda: read("a"))
        second = cache.refresh("a", lambda: read("a"))  # while the first is in flight
        other = cache.refresh("b", lambda: read("b"))
        await asyncio.gather(first, other)
        after = cache.refresh("a", lambda: read("a"))  # the first one is done: a new refresh
        await after
        return first is second, after is first, list(started)

    shared, reused_done, reads = asyncio.run(main())

    assert (shared, reused_done) == (True, False)
    assert reads == ["a", "b", "a"]
    assert cache.get("a") == "value of a"


def test_caches_clear_empties_every_module_cache():
    # Given the module-level caches of the turn path, the ops page and lore, each holding something
    from console import selectors
    from console.lore import packs as lore
    from inference import context, guardrails, prompts, workers
    from memory import pairs

    module_caches = [
        workers._health_seen,
        context._context_cache,
        guardrails._special_tokens,
        prompts._token_counters,
        lore._packs,
        selectors._worker_figures,
        pairs.hot_memory()._pairs,
    ]
    for cache in module_caches:
        assert cache in caches_registered()
        cache.set("key", object())

    # When the registry is cleared
    caches_clear()

    # Then none of them remembers anything
    assert [len(cache) for cache in module_caches] == [0] * len(module_caches)
