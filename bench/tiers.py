"""Activation tier recomputation: 10,000 NPCs and 200 moving players per tick (aim: under 5 ms
on 2 cores); with --live, also a simulated region through the real bridge.

    python -m bench.tiers [--npcs 10000] [--players 200] [--ticks 300] [--live [--seconds 120]]

Each tick the players walk (1.4 m/s at 10 ticks/s, turning at random) in a 2 km square region
of randomly placed NPCs; `RegionTiers.update` then recomputes every NPC's tier, as the bridge
does for a `world.positions` frame (nearest player by k-d tree, bands with hysteresis,
capacities, the list of changes). Side by side, on the same frames, the baseline computes the
nearest player from the full NPC x player distance matrix (what numpy does without a tree).

Reported: per-tick milliseconds (p50, p95, max) of ours and of the baseline, their ratio, the
tier changes per tick, and the most Gold and Silver NPCs seen at once against the capacities
(never exceeded). Prints one JSON line.

--live: the Plague Marsh of the demo world (its own database, bench.stack: a vLLM worker and a
Daphne process) filled up to 600 NPCs around the zombie horde, with capacities of 40 Gold and
120 Silver. A game server sends positions at 5 frames/s while 8 players wander for --seconds;
one of them keeps talking to the nearest real Gold NPC. Reported: frames, tier changes, the
most Gold and Silver NPCs any npc.tier frame counted (against the capacities), the time from a
positions frame to its npc.tier answer, and the Gold turns' latency through the bridge next to
the same turns run directly on the engine (inference.turn.play.turn_run in this process, same
worker, one after the other). A second JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

REGION_M = 2000.0
TICK_S = 0.1
WALK_M_PER_S = 1.4


def _baseline_nearest(npcs: np.ndarray, players: np.ndarray) -> np.ndarray:
    """The nearest player's distance from the whole distance matrix (no tree)."""
    squared = (npcs**2).sum(axis=1)[:, None] + (players**2).sum(axis=1)[None, :] - 2.0 * npcs @ players.T
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "max": round(ordered[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npcs", type=int, default=10_000)
    parser.add_argument("--players", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--live", action="store_true", help="also the simulated region through the bridge")
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    if args.live:
        from bench.stack import django_setup

        # A busy 2-core worker takes seconds per turn: no Gold turn may end early with a bark.
        django_setup(environ={"TURN_DEADLINE_GOLD_S": "600"})

    from inference.activation import GOLD, SILVER, RegionTiers, TierPolicy, tiers_assign

    rng = np.random.default_rng(args.seed)
    policy = TierPolicy()
    npcs = rng.uniform(0, REGION_M, size=(args.npcs, 3))
    npcs[:, 1] = 0.0  # the ground
    npc_ids = [f"npc-{index}" for index in range(args.npcs)]
    # Players start in clusters, as parties do, so some NPCs crowd into the bands.
    players = rng.uniform(0, REGION_M, size=(args.players, 3))
    players[:, 1] = 0.0
    heading = rng.uniform(0, 2 * np.pi, size=args.players)
    player_ids = [f"player-{index}" for index in range(args.players)]

    region = RegionTiers(region="bench", policy=policy)
    region.update(npc_ids=npc_ids, npcs=npcs, player_ids=player_ids, players=players)  # first placement
    ours, baseline, changes = [], [], []
    most_gold = most_silver = disagreements = 0
    previous_baseline = region.tiers.copy()
    no_boost = np.zeros(args.npcs, dtype=np.int8)
    frames = []
    for _ in range(args.ticks):
        heading += rng.normal(0, 0.3, size=args.players)
        step = WALK_M_PER_S * TICK_S
        players[:, 0] = np.clip(players[:, 0] + step * np.cos(heading), 0, REGION_M)
        players[:, 2] = np.clip(players[:, 2] + step * np.sin(heading), 0, REGION_M)
        frames.append(players.copy())

    # Ours over every frame, then the baseline over the same frames: one after the other in the
    # same run, so neither evicts the other's data from the caches between ticks (the baseline's
    # 10,000 x 200 matrix is 16 MB).
    ours_tiers = []
    for frame in frames:
        started = time.perf_counter()
        update = region.update(npc_ids=npc_ids, npcs=npcs, player_ids=player_ids, players=frame)
        ours.append((time.perf_counter() - started) * 1000)
        ours_tiers.append(region.tiers)
        changes.append(len(update.changes))
        most_gold = max(most_gold, int((region.tiers == GOLD).sum()))
        most_silver = max(most_silver, int((region.tiers == SILVER).sum()))
    for frame, tiers in zip(frames, ours_tiers, strict=True):
        started = time.perf_counter()
        distance = _baseline_nearest(npcs, frame)
        previous_baseline = tiers_assign(distance, previous_baseline, no_boost, policy)
        baseline.append((time.perf_counter() - started) * 1000)
        # Float rounding differs between the two (a sum of squares against the tree's own), so
        # an NPC exactly on a band's edge could land apart: counted, and expected to be 0.
        disagreements += int((previous_baseline != tiers).sum())

    figures = {
        "bench": "tiers",
        "npcs": args.npcs,
        "players": args.players,
        "ticks": args.ticks,
        "ours_ms": _ms(ours),
        "baseline_matrix_ms": _ms(baseline),
        "ratio_p50": round(statistics.median(baseline) / statistics.median(ours), 2),
        "target_ms": 5.0,
        "met_p50": _ms(ours)["p50"] < 5.0,
        "met_p95": _ms(ours)["p95"] < 5.0,
        "disagreements_with_baseline": disagreements,
        "changes_per_tick": round(statistics.mean(changes), 1),
        "final": region.counts(),
        "most_gold": most_gold,
        "gold_capacity": policy.gold_capacity,
        "most_silver": most_silver,
        "silver_capacity": policy.silver_capacity,
        "capacity_respected": most_gold <= policy.gold_capacity and most_silver <= policy.silver_capacity,
    }
    print(json.dumps(figures))
    if args.live:
        live_region(seconds=args.seconds, seed=args.seed)


LIVE_REGION = "plague-marsh"
LIVE_NPCS = 600
LIVE_PLAYERS = 8
LIVE_GOLD, LIVE_SILVER = 40, 120
FRAMES_PER_S = 5.0


def live_region(*, seconds: float, seed: int) -> None:
    import asyncio

    from bench.stack import demo_world_ready, figures_print, percentile, stack_running
    from console.models import NPC, Region
    from console.services.keys import game_key_create
    from inference.activation import HISTORY_KEY, REGION_KEY, tiers_key

    demo_world_ready()
    Region.objects.filter(slug=LIVE_REGION).update(gold_capacity=LIVE_GOLD, silver_capacity=LIVE_SILVER)
    region = Region.objects.select_related("world").get(slug=LIVE_REGION)
    real = list(NPC.objects.filter(region=region).exclude(slug__startswith="sim-npc-")
                .values_list("slug", "position_x", "position_y", "position_z"))  # fmt: skip
    # The game server's positions frames name NPCs of the region only (others are ignored), so
    # the synthetic crowd is made of NPC rows too, in the bench's own database.
    synthetic = LIVE_NPCS - len(real)
    crowd = [f"sim-npc-{index}" for index in range(synthetic)]
    archetype = NPC.objects.filter(region=region).select_related("archetype").first()
    assert archetype is not None, f"the demo world's {LIVE_REGION} has no NPC"
    NPC.objects.bulk_create(
        [NPC(slug=slug, name=slug, archetype=archetype.archetype, region=region) for slug in crowd],
        ignore_conflicts=True,
    )
    key = game_key_create(name=f"bench-tiers-{time.time_ns()}", scopes=["play", "positions", "players"])[1]
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    where = {"world": region.world.slug, "region": LIVE_REGION}
    client.delete(tiers_key(**where), REGION_KEY.format(**where), HISTORY_KEY.format(**where))
    rng = np.random.default_rng(seed)
    centre = np.array([1530.0, 1.0, 1600.0])
    points = np.vstack([
        np.array([position for _, *position in real], dtype=np.float64).reshape(-1, 3),
        centre + rng.uniform(-300, 300, size=(synthetic, 3)) * np.array([1.0, 0.0, 1.0]),
    ])  # fmt: skip
    ids = [slug for slug, *_ in real] + crowd
    with stack_running() as stack:
        url = stack.daphne_start(name="tiers", worker=stack.worker_url)
        figures = asyncio.run(
            _live(url=url, key=key, ids=ids, points=points, real={slug for slug, *_ in real},
                  worker=stack.worker_url, seconds=seconds, rng=rng, centre=centre)
        )  # fmt: skip
    for name in ("bridge", "direct"):
        values = figures.pop(f"{name}_ms")
        figures[f"gold_{name}_total_ms"] = {"p50": round(percentile(values, 50), 1),
                                            "p95": round(percentile(values, 95), 1)}  # fmt: skip
    latency = figures.pop("tier_answer_ms")
    figures["positions_to_npc_tier_ms"] = {"p50": round(percentile(latency, 50), 1),
                                           "p95": round(percentile(latency, 95), 1)}  # fmt: skip
    direct_p95 = figures["gold_direct_total_ms"]["p95"]
    figures["gold_p95_bridge_over_engine"] = (
        round(figures["gold_bridge_total_ms"]["p95"] / direct_p95, 3) if direct_p95 == direct_p95 else None
    )
    figures_print(figures)


async def _live(
    *, url: str, key: str, ids: list[str], points: np.ndarray, real: set[str], worker: str,
    seconds: float, rng: np.random.Generator, centre: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    import asyncio

    from websockets.asyncio.client import connect

    from inference.context import turn_context_build
    from inference.turn.play import turn_run

    players = centre + rng.uniform(-60, 60, size=(LIVE_PLAYERS, 3)) * np.array([1.0, 0.0, 1.0])
    heading = rng.uniform(0, 2 * np.pi, size=LIVE_PLAYERS)
    tiers: dict[str, str] = {}
    figures: dict[str, Any] = {"bench": "tiers_live", "npcs": len(ids), "real_npcs": len(real),
                                  "players": LIVE_PLAYERS, "seconds": seconds, "gold_capacity": LIVE_GOLD,
                                  "silver_capacity": LIVE_SILVER}  # fmt: skip
    sent_at: list[float] = []
    answer_ms: list[float] = []
    changes = frames = most_gold = most_silver = 0
    bridge_ms: list[float] = []
    direct_ms: list[float] = []
    turn_done: asyncio.Queue[dict] = asyncio.Queue()
    headers = {"Authorization": f"Bearer {key}"}
    npc_positions = [
        {"id": npc, "x": x, "y": y, "z": z} for npc, (x, y, z) in zip(ids, points.tolist(), strict=True)
    ]
    deadline = time.monotonic() + seconds
    async with connect(url, additional_headers=headers, max_size=2**24) as server, \
            connect(url, additional_headers=headers) as talker:  # fmt: skip
        await server.send(json.dumps({"type": "session.start", "player_id": "game-server"}))
        await talker.send(json.dumps({"type": "session.start", "player_id": "player-0"}))

        async def read_server() -> None:
            nonlocal changes, most_gold, most_silver
            async for raw in server:
                frame = json.loads(raw)
                if frame["type"] == "npc.tier":
                    if sent_at:
                        answer_ms.append((time.perf_counter() - sent_at[-1]) * 1000)
                    changes += len(frame["changes"])
                    most_gold = max(most_gold, frame["counts"]["gold"])
                    most_silver = max(most_silver, frame["counts"]["silver"])
                    for change in frame["changes"]:
                        tiers[change["npc_id"]] = change["tier"]
                    await server.send(json.dumps({"type": "ack", "seq": frame["seq"]}))

        async def read_talker() -> None:
            async for raw in talker:
                frame = json.loads(raw)
                if frame["type"] in ("turn.end", "turn.error", "error"):
                    await turn_done.put(frame)
                    if "seq" in frame and frame["seq"]:
                        await talker.send(json.dumps({"type": "ack", "seq": frame["seq"]}))

        async def move() -> None:
            nonlocal frames
            while time.monotonic() < deadline:
                heading[:] += rng.normal(0, 0.4, size=LIVE_PLAYERS)
                players[:, 0] += 3.0 / FRAMES_PER_S * np.cos(heading)
                players[:, 2] += 3.0 / FRAMES_PER_S * np.sin(heading)
                frame = {"type": "world.positions", "region": LIVE_REGION, "npcs": npc_positions,
                         "players": [{"id": f"player-{index}", "x": x, "y": y, "z": z}
                                     for index, (x, y, z) in enumerate(players.tolist())]}  # fmt: skip
                sent_at.append(time.perf_counter())
                await server.send(json.dumps(frame))
                frames += 1
                await asyncio.sleep(1 / FRAMES_PER_S)

        async def talk() -> None:
            lines = ["What are you?", "Where is everyone?", "Are you hungry?", "Can you hear me?"]
            turn = 0
            while time.monotonic() < deadline:
                gold = [npc for npc in real if tiers.get(npc) == "gold"]
                if not gold:
                    await asyncio.sleep(0.5)
                    continue
                npc = min(gold, key=lambda slug: float(np.linalg.norm(points[ids.index(slug)] - players[0])))
                text = lines[turn % len(lines)]
                started = time.perf_counter()
                await talker.send(json.dumps({"type": "npc.say", "request_id": f"t{turn}", "npc_id": npc,
                                              "text": text}))  # fmt: skip
                end = await turn_done.get()
                if end["type"] == "turn.end" and "worker_down" not in end["fallbacks"]:
                    bridge_ms.append((time.perf_counter() - started) * 1000)
                    context = await asyncio.to_thread(turn_context_build, npc_slug=npc)
                    started = time.perf_counter()
                    await turn_run(context=context, player_text=text, workers=[worker], tier="gold")
                    direct_ms.append((time.perf_counter() - started) * 1000)
                turn += 1

        readers = [asyncio.create_task(read_server()), asyncio.create_task(read_talker())]
        await asyncio.gather(move(), talk())
        for reader in readers:
            reader.cancel()
    figures.update({
        "frames": frames, "tier_changes": changes, "changes_per_s": round(changes / seconds, 1),
        "most_gold": most_gold, "most_silver": most_silver,
        "capacity_respected": most_gold <= LIVE_GOLD and most_silver <= LIVE_SILVER,
        "gold_turns": len(bridge_ms), "bridge_ms": bridge_ms, "direct_ms": direct_ms,
        "tier_answer_ms": answer_ms,
    })  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
