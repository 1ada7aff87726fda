"""Activation tier recomputation: 10,000 NPCs and 200 moving players per tick (aim: under 5 ms
on 2 cores).

    python -m bench.tiers [--npcs 10000] [--players 200] [--ticks 300]

Each tick the players walk (1.4 m/s at 10 ticks/s, turning at random) in a 2 km square region
of randomly placed NPCs; `RegionTiers.update` then recomputes every NPC's tier, as the bridge
does for a `world.positions` frame (nearest player by k-d tree, bands with hysteresis,
capacities, the list of changes). Side by side, on the same frames, the baseline computes the
nearest player from the full NPC x player distance matrix (what numpy does without a tree).

Reported: per-tick milliseconds (p50, p95, max) of ours and of the baseline, their ratio, the
tier changes per tick, and the most Gold and Silver NPCs seen at once against the capacities
(never exceeded). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

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
    args = parser.parse_args()

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
    for _ in range(args.ticks):
        heading += rng.normal(0, 0.3, size=args.players)
        step = WALK_M_PER_S * TICK_S
        players[:, 0] = np.clip(players[:, 0] + step * np.cos(heading), 0, REGION_M)
        players[:, 2] = np.clip(players[:, 2] + step * np.sin(heading), 0, REGION_M)

        started = time.perf_counter()
        update = region.update(npc_ids=npc_ids, npcs=npcs, player_ids=player_ids, players=players)
        ours.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        distance = _baseline_nearest(npcs, players)
        previous_baseline = tiers_assign(distance, previous_baseline, no_boost, policy)
        baseline.append((time.perf_counter() - started) * 1000)

        # Float rounding differs between the two (a sum of squares against the tree's own), so
        # an NPC exactly on a band's edge could land apart: counted, and expected to be 0.
        disagreements += int((previous_baseline != region.tiers).sum())
        changes.append(len(update.changes))
        most_gold = max(most_gold, int((region.tiers == GOLD).sum()))
        most_silver = max(most_silver, int((region.tiers == SILVER).sum()))

    figures = {
        "bench": "tiers",
        "npcs": args.npcs,
        "players": args.players,
        "ticks": args.ticks,
        "ours_ms": _ms(ours),
        "baseline_matrix_ms": _ms(baseline),
        "ratio_p50": round(statistics.median(baseline) / statistics.median(ours), 2),
        "target_ms": 5.0,
        "met": _ms(ours)["p95"] < 5.0,
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


if __name__ == "__main__":
    main()
