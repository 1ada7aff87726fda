"""Memory on the turn's path, and the archive's throughput.

    python -m bench.memory [--pairs 500] [--reads 2000] [--events 20000]

- hot / warm / cold: the memory part of a turn's context (the pair's memory loaded, then the
  prompt's memory slot rendered) from the in-process hot tier, from Redis (one pipelined round
  trip), and from the archive (a pair whose Redis window expired, rebuilt from Postgres by
  memory_rehydrate, then loaded), p50/p95 in ms. The design asked for 1 / 5 / 10 ms; we aim
  at 0.2 / 2 / 5 ms.
- archiver: --events memory events through the stream into Postgres by the archiver (batched
  INSERT … ON CONFLICT DO NOTHING), events/s, side by side with saving one row at a time
  through the ORM (the baseline), and their ratio.

Runs on bench.stack's own database and the test settings' Redis database, which it empties.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from bench.stack import django_setup, figures_print, percentile


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(samples, 50), 3), "p95_ms": round(percentile(samples, 95), 3)}


async def _reads(*, pairs: list[tuple[str, str]], reads: int, hot: bool) -> list[float]:
    from django.conf import settings
    from redis.asyncio import Redis

    from memory import pairs as pair_store
    from memory.pairs import HotMemory, memory_for_turn
    from memory.prompt import memory_slot

    redis = Redis.from_url(settings.REDIS_URL)
    samples = []
    pair_store._hot = HotMemory()
    if hot:
        for npc, player in pairs:
            await memory_for_turn(redis, npc, player)
    for index in range(reads):
        npc, player = pairs[index % len(pairs)]
        if not hot:
            pair_store._hot = HotMemory()  # every read misses the hot tier
        started = time.perf_counter()
        memory, source = await memory_for_turn(redis, npc, player)
        memory_slot(memory)
        samples.append((time.perf_counter() - started) * 1000)
        assert source == ("hot" if hot else "warm"), source
    await redis.aclose()
    return samples


def _cold(*, pairs: list[tuple[str, str]]) -> list[float]:
    """Rebuild from Postgres, then load and render, for pairs Redis no longer holds."""
    import redis as redis_sync
    from django.conf import settings
    from redis.asyncio import Redis

    from memory import pairs as pair_store
    from memory.pairs import HotMemory, memory_for_turn
    from memory.prompt import memory_slot
    from memory.services import memory_rehydrate

    client = redis_sync.Redis.from_url(settings.REDIS_URL)
    loop = asyncio.new_event_loop()  # the ORM refuses to run inside a running loop: step it by hand
    redis = Redis.from_url(settings.REDIS_URL)
    samples = []
    for npc, player in pairs:
        client.delete(*(f"mem:{npc}:{player}:{name}" for name in pair_store.PAIR_KEYS))
        pair_store._hot = HotMemory()
        started = time.perf_counter()
        memory_rehydrate(redis=client, npc=npc, player=player)
        memory, source = loop.run_until_complete(memory_for_turn(redis, npc, player))
        memory_slot(memory)
        samples.append((time.perf_counter() - started) * 1000)
        assert source == "warm", source
        assert len(memory.turns) == settings.MEMORY_RECENT_TURNS
    loop.run_until_complete(redis.aclose())
    loop.close()
    return samples


def _pairs_fill(pairs: list[tuple[str, str]], turns: int) -> None:
    """Every pair gets `turns` turns, facts and a relationship card, in Redis and in the archive."""
    import redis as redis_sync
    from django.conf import settings

    from memory.archiver import Archiver
    from memory.events import MemoryEventRecord
    from memory.pairs import RememberedTurn, pair_prefix

    client = redis_sync.Redis.from_url(settings.REDIS_URL)
    now = time.time()
    for npc, player in pairs:
        prefix = pair_prefix(npc, player)
        with client.pipeline() as pipe:
            for index in range(turns):
                line = f"Turn {index}: tell me about the castle and the old bridge, please."
                reply = "The castle is old. " * 4
                pipe.lpush(prefix + "turns", RememberedTurn(line, reply, "calm", "bow", now + index).dumps())
                record = MemoryEventRecord(
                    kind="turn", npc=npc, player=player, data={"player": line, "npc": reply}
                )
                pipe.xadd(settings.MEMORY_STREAM, record.entry())  # type: ignore[arg-type]
            pipe.zadd(prefix + "facts", {f"They asked about thing {index}.": index for index in range(10)})
            card = {"turns": turns, "trust": 0.2, "affinity": 0.4, "gifts": '["a ring"]'}
            pipe.hset(prefix + "relationship", mapping=card)  # type: ignore[arg-type]
            pipe.lpush(prefix + "summaries", '{"text": "They asked about the castle and left.", "at": 0}')
            pipe.execute()
    archiver = Archiver(redis=client, consumer="bench-fill", block_ms=5)
    archiver.group_ensure()
    archiver.drain()


def _archiver_throughput(events: int) -> dict[str, Any]:
    import redis as redis_sync
    from django.conf import settings

    from memory.archiver import Archiver
    from memory.events import MemoryEventRecord
    from memory.models import MemoryEvent

    client = redis_sync.Redis.from_url(settings.REDIS_URL)
    line = {"player": "Hello there.", "npc": "Good evening, traveller."}
    records = [
        MemoryEventRecord(kind="turn", npc="count-valerian", player=f"bench-{index % 100}", data=line)
        for index in range(events)
    ]
    with client.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.xadd(settings.MEMORY_STREAM, record.entry())  # type: ignore[arg-type]
        pipe.execute()
    archiver = Archiver(redis=client, consumer="bench", block_ms=5)
    archiver.group_ensure()
    started = time.perf_counter()
    archiver.drain()
    archived_s = time.perf_counter() - started
    assert archiver.stats.archived == events, archiver.stats

    baseline = [
        MemoryEventRecord(kind="turn", npc="count-valerian", player="orm", data=line)
        for _ in range(min(events, 2000))
    ]
    started = time.perf_counter()
    for record in baseline:
        record.model().save()  # one INSERT and commit per event
    orm_s = time.perf_counter() - started
    MemoryEvent.objects.filter(player_id="orm").delete()
    ours, orm = events / archived_s, len(baseline) / orm_s
    return {
        "events": events,
        "events_s": round(ours),
        "orm_one_by_one_events_s": round(orm),
        "ratio": round(ours / orm, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--cold", type=int, default=200, help="pairs rebuilt from the archive")
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    django_setup()
    import redis as redis_sync
    from django.conf import settings
    from django.core.management import call_command

    from memory.models import ForgottenPlayer, MemoryEvent

    call_command("migrate", interactive=False, verbosity=0)
    redis_sync.Redis.from_url(settings.REDIS_URL).flushdb()
    MemoryEvent.objects.all().delete()
    ForgottenPlayer.objects.all().delete()

    pairs = [(f"npc-{index % 50}", f"player-{index}") for index in range(args.pairs)]
    print(f"filling {len(pairs)} pairs…", file=sys.stderr)
    _pairs_fill(pairs, turns=settings.MEMORY_RECENT_TURNS)
    hot = asyncio.run(_reads(pairs=pairs, reads=args.reads, hot=True))
    warm = asyncio.run(_reads(pairs=pairs, reads=args.reads, hot=False))
    cold = _cold(pairs=pairs[: args.cold])
    print(f"archiving {args.events} events…", file=sys.stderr)
    MemoryEvent.objects.all().delete()
    figures_print(
        {
            "bench": "memory",
            "hot": _ms(hot),
            "warm": _ms(warm),
            "cold": _ms(cold),
            "archiver": _archiver_throughput(args.events),
        }
    )


if __name__ == "__main__":
    main()
