"""What ops watch: every finished turn's figures and cost, kept in Redis for the ops dashboard
(console.views.ops_dashboard), next to the Prometheus series of inference.metrics.

Redis rather than each process's Prometheus registry: the dashboard is served by any Daphne
process and must see the turns of all of them. Per turn, one pipeline:

    ops:turns               LIST   the last RECENT_TURNS_KEPT turns, newest first (compact JSON:
                                   time, tier, timings, tokens, fallbacks, NPC, region)
    ops:cost:<kind>:<hour>       ZSET  name -> tokens in that hour, for kind npc, archetype,
                                       player, region; expires COST_KEPT_S after its last write
    ops:worker_ms:<kind>:<hour>  ZSET  name -> milliseconds of worker time, same kinds
    ops:region_tokens:<region>:<hour>  STRING  tokens this hour (the region's budget)

Costs are bucketed by the hour and expire (a hash per kind gained a field per player forever,
and the dashboard read it whole every 2 s); the dashboard reads the top spenders of the last
COST_WINDOW_HOURS from their union (cost_top). Figures are computed when the dashboard asks,
from the recent turns: turns/s and tokens/s over the last minute, latency percentiles and
fallbacks over the last hour.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from console.redis_clients import redis_text
from inference import metrics
from inference.activation import HISTORY_KEPT, HISTORY_KEY, REGION_KEY

if TYPE_CHECKING:
    from redis import Redis as SyncRedis
    from redis.asyncio import Redis

RECENT_TURNS_KEY = "ops:turns"
RECENT_TURNS_KEPT = 20000
COST_KEY = "ops:cost:{kind}:{hour}"
WORKER_MS_KEY = "ops:worker_ms:{kind}:{hour}"
REGION_TOKENS_KEY = "ops:region_tokens:{region}:{hour}"
COST_KINDS = ("npc", "archetype", "player", "region")
# The dashboard's cost tables cover the last day, the current hour included; a bucket lives an
# hour longer than the window from its last write, so the window never misses one.
COST_WINDOW_HOURS = 24
COST_KEPT_S = (COST_WINDOW_HOURS + 1) * 3600
# The window's totals (a ZUNIONSTORE over its buckets, O(their entries): 24 x 5,000 players is
# tens of milliseconds of Redis) are cached this long, not recomputed at each 2 s poll of
# every open dashboard.
COST_TOTAL_KEY = "ops:{figure}:{kind}:window"
COST_TOTAL_TTL_S = 15
# Before buckets, one hash per kind held every name ever seen (ops:cost:<kind>); nothing reads
# it now, ops_player_forget still clears a player from it.
_LEGACY_COST_KEYS = ("ops:cost:{kind}", "ops:worker_ms:{kind}")


def _hour(now: float) -> int:
    return int(now // 3600)


async def turn_observe(
    redis: Redis, *, npc: str, archetype: str, region: str, player: str, payload: dict[str, Any]
) -> None:
    """One finished turn into the ops figures and its cost into the accounts."""
    now = time.time()
    usage, timing = payload.get("usage") or {}, payload.get("timing") or {}
    tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
    # Worker time: the whole turn when it ran on the model; a bark costs the worker nothing.
    worker_ms = float(timing.get("total_ms") or 0.0) if payload.get("worker") else 0.0
    entry = {
        "at": round(now, 3), "tier": payload.get("tier"), "ttft_ms": timing.get("ttft_ms"),
        "total_ms": timing.get("total_ms"), "completion_tokens": int(usage.get("completion_tokens", 0)),
        "tokens": tokens, "fallbacks": payload.get("fallbacks", []), "npc": npc, "region": region,
    }  # fmt: skip
    names = {"npc": npc, "archetype": archetype, "player": player, "region": region}
    metrics.TOKENS.labels(region=region, archetype=archetype).inc(tokens)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(RECENT_TURNS_KEY, json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(RECENT_TURNS_KEY, 0, RECENT_TURNS_KEPT - 1)
        for kind, name in names.items():
            for template, amount in ((COST_KEY, tokens), (WORKER_MS_KEY, round(worker_ms, 1))):
                if amount:
                    key = template.format(kind=kind, hour=_hour(now))
                    pipe.zincrby(key, amount, name)
                    pipe.expire(key, COST_KEPT_S)
        if tokens:
            key = REGION_TOKENS_KEY.format(region=region, hour=_hour(now))
            pipe.incrby(key, tokens)
            pipe.expire(key, 7200)
        await pipe.execute()


async def region_over_budget(redis: Redis, region: str, budget_per_hour: int) -> bool:
    """Whether the region spent its token budget this hour (0: no budget)."""
    if budget_per_hour <= 0:
        return False
    spent = await redis.get(REGION_TOKENS_KEY.format(region=region, hour=_hour(time.time())))
    return spent is not None and int(spent) >= budget_per_hour


@dataclass(frozen=True)
class TurnFigures:
    turns_per_s: float
    tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    total_p50_ms: float | None
    total_p95_ms: float | None
    turns_last_hour: int
    fallbacks: dict[str, int]
    # Per minute over the last hour, oldest first: (minute start, turns, p50 and p95 total ms).
    per_minute: list[tuple[float, int, float | None, float | None]]


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


def turn_figures(entries: list[dict[str, Any]], *, now: float, window_s: float = 60.0) -> TurnFigures:
    """The dashboard's turn figures from recent turns (newest first or in any order)."""
    hour = [entry for entry in entries if now - float(entry["at"]) <= 3600]
    recent = [entry for entry in hour if now - float(entry["at"]) <= window_s]
    modelled = [entry for entry in hour if entry.get("total_ms") is not None]
    fallbacks: dict[str, int] = {}
    for entry in hour:
        for reason in entry.get("fallbacks") or []:
            key = reason.split(":")[0]
            fallbacks[key] = fallbacks.get(key, 0) + 1
    minutes: dict[int, list[float]] = {}
    for entry in modelled:
        minutes.setdefault(int(float(entry["at"]) // 60), []).append(float(entry["total_ms"]))
    first = int((now - 3600) // 60) + 1
    per_minute = [
        (minute * 60.0, len(minutes.get(minute, [])), _percentile(minutes.get(minute, []), 0.5),
         _percentile(minutes.get(minute, []), 0.95))
        for minute in range(first, int(now // 60) + 1)
    ]  # fmt: skip
    ttfts = [float(entry["ttft_ms"]) for entry in modelled if entry.get("ttft_ms") is not None]
    totals = [float(entry["total_ms"]) for entry in modelled]
    return TurnFigures(
        turns_per_s=round(len(recent) / window_s, 3),
        tokens_per_s=round(sum(int(entry.get("completion_tokens", 0)) for entry in recent) / window_s, 2),
        ttft_p50_ms=_percentile(ttfts, 0.5), ttft_p95_ms=_percentile(ttfts, 0.95),
        total_p50_ms=_percentile(totals, 0.5), total_p95_ms=_percentile(totals, 0.95),
        turns_last_hour=len(hour), fallbacks=dict(sorted(fallbacks.items())), per_minute=per_minute,
    )  # fmt: skip


def recent_turns(redis: SyncRedis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis.lrange(RECENT_TURNS_KEY, 0, RECENT_TURNS_KEPT - 1)]


def _window_total(redis: SyncRedis, template: str, kind: str, *, now: float) -> str:
    """The key of the cost window's totals for one figure and kind (cached COST_TOTAL_TTL_S)."""
    figure = template.split(":")[1]
    key = COST_TOTAL_KEY.format(figure=figure, kind=kind)
    if not redis.exists(key):
        last = _hour(now)
        buckets = [
            template.format(kind=kind, hour=hour) for hour in range(last - COST_WINDOW_HOURS + 1, last + 1)
        ]
        with redis.pipeline(transaction=True) as pipe:
            pipe.zunionstore(key, buckets)
            pipe.expire(key, COST_TOTAL_TTL_S)
            pipe.execute()
    return key


def _top_names(redis: SyncRedis, key: str, limit: int) -> list[str]:
    found: list[bytes | str] = redis.zrevrange(key, 0, limit - 1)  # type: ignore[assignment]  # redis-py types every reply alike
    return [redis_text(name) for name in found]


def cost_top(
    redis: SyncRedis, *, limit: int = 10, now: float | None = None
) -> dict[str, list[tuple[str, int, float]]]:
    """Per kind, the biggest spenders of the last COST_WINDOW_HOURS: (name, tokens, worker
    seconds), most tokens first (then most worker time, for turns that reported no usage)."""
    now = time.time() if now is None else now
    table: dict[str, list[tuple[str, int, float]]] = {}
    for kind in COST_KINDS:
        tokens_key = _window_total(redis, COST_KEY, kind, now=now)
        worker_key = _window_total(redis, WORKER_MS_KEY, kind, now=now)
        names = _top_names(redis, tokens_key, limit)
        if len(names) < limit:
            names += [name for name in _top_names(redis, worker_key, limit) if name not in names][
                : limit - len(names)
            ]
        if not names:
            table[kind] = []
            continue
        tokens = redis.zmscore(tokens_key, names)
        worker = redis.zmscore(worker_key, names)
        table[kind] = [
            (name, int(spent or 0), round(float(ms or 0.0) / 1000, 1))
            for name, spent, ms in zip(names, tokens, worker, strict=True)
        ]
    return table


def ops_player_forget(redis: SyncRedis, player_id: str) -> int:
    """Remove a player from every cost bucket and cached total (forgetting a player); returns
    how many entries were removed."""
    last = _hour(time.time())
    # Every bucket that can still exist, with an hour's slack either side for clocks that differ
    # between processes: no SCAN of the keyspace.
    hours = range(last - COST_KEPT_S // 3600 - 1, last + 2)
    with redis.pipeline(transaction=False) as pipe:
        for template in (COST_KEY, WORKER_MS_KEY):
            for hour in hours:
                pipe.zrem(template.format(kind="player", hour=hour), player_id)
            pipe.zrem(COST_TOTAL_KEY.format(figure=template.split(":")[1], kind="player"), player_id)
        for legacy in _LEGACY_COST_KEYS:
            pipe.hdel(legacy.format(kind="player"), player_id)
        return sum(int(removed) for removed in pipe.execute())


def region_tiers(redis: SyncRedis) -> list[dict[str, Any]]:
    """Per region the activation tiers last computed (inference.activation), with their history
    over the last hour, oldest first."""
    prefix = REGION_KEY.format(world="", region="").removesuffix(":")
    regions = []
    for key in sorted(redis.scan_iter(match=prefix + "*:*")):
        # Slugs hold no colon: the key's tail is world:region.
        world, _, name = redis_text(key).removeprefix(prefix).partition(":")
        found = {redis_text(k): redis_text(v) for k, v in redis.hgetall(key).items()}
        history = [
            json.loads(raw)
            for raw in redis.lrange(HISTORY_KEY.format(world=world, region=name), 0, HISTORY_KEPT - 1)
        ]
        regions.append({
            "region": name, "world": world, "players": int(found.get("players", 0)),
            "at": float(found.get("at", 0)),
            **{tier: int(found.get(tier, 0)) for tier in ("gold", "silver", "bronze")},
            "history": history[::-1],
        })  # fmt: skip
    return regions


def archive_lag(redis: SyncRedis, stream: str) -> dict[str, int]:
    """The memory stream's length, and per archiver group the entries not archived yet: read
    but not acknowledged (pending) and not read at all (lag)."""
    from redis.exceptions import ResponseError

    figures = {"length": int(redis.xlen(stream)), "pending": 0, "lag": 0}
    try:
        groups = redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet: nothing was ever said
        return figures
    for group in groups:
        figures["pending"] += int(group.get("pending") or 0)
        figures["lag"] += int(group.get("lag") or 0)
    return figures
