"""Activation tiers: which NPCs get the model, and how much of it (memory.tiers are the
memory's hot, warm and archive tiers, another thing).

Gold NPCs speak with full replies and memory, Silver ones briefly, Bronze ones only bark (no
model; inference.turns.tier_sampling). A game server sends `world.positions` frames for a
region; each NPC's tier follows its distance to the nearest player:

- bands with hysteresis: an NPC enters Gold inside `gold_enter_m` and leaves it only beyond
  `gold_exit_m` (likewise Silver), so an NPC at the edge does not flip at every frame;
- raised one tier by a boost (the NPC carries quest flags, or a strong relationship with a
  player), so a quest giver at 50 m already answers fully;
- bounded per region: at most `gold_capacity` Gold and `silver_capacity` Silver NPCs, the
  closest kept, the overflow demoted one tier (Gold overflow may push Silver's farthest to
  Bronze).

The computation is vectorised (numpy, and scipy's k-d tree for the nearest player): 10,000
NPCs and 200 players take a few milliseconds (bench/tiers.py). `RegionTiers` keeps one
region's tiers from frame to frame; `tiers_apply` runs a frame for the bridge and publishes the
result in Redis (every NPC's tier, for turns on any bridge process; region counts and their
history, for the ops dashboard) and in Prometheus.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from console.models import Region

GOLD, SILVER, BRONZE = 0, 1, 2
# The previous tier of an NPC a region has not placed before: below Bronze for the hysteresis,
# reported as a change from None so the client learns every NPC's first tier.
UNSEEN = 3
TIER_NAMES = ("gold", "silver", "bronze")

Floats = np.ndarray[Any, np.dtype[np.float64]]
Codes = np.ndarray[Any, np.dtype[np.int8]]


@dataclass(frozen=True)
class TierPolicy:
    """One region's bands (metres) and capacities. Defaults are the seeds' figures: Gold inside
    25 m, out beyond 35 m; 80-200 Gold and 200-400 Silver NPCs per region."""

    gold_enter_m: float = 25.0
    gold_exit_m: float = 35.0
    silver_enter_m: float = 60.0
    silver_exit_m: float = 75.0
    gold_capacity: int = 200
    silver_capacity: int = 400

    def __post_init__(self) -> None:
        if not 0 <= self.gold_enter_m <= self.gold_exit_m:
            raise ValueError("gold bands: need 0 <= gold_enter_m <= gold_exit_m")
        if not self.gold_enter_m <= self.silver_enter_m <= self.silver_exit_m:
            raise ValueError("silver bands: need gold_enter_m <= silver_enter_m <= silver_exit_m")
        if self.gold_capacity < 0 or self.silver_capacity < 0:
            raise ValueError("tier capacities cannot be negative")

    @classmethod
    def for_region(cls, region: Region) -> TierPolicy:
        return cls(
            gold_enter_m=region.gold_enter_m, gold_exit_m=region.gold_exit_m,
            silver_enter_m=region.silver_enter_m, silver_exit_m=region.silver_exit_m,
            gold_capacity=region.gold_capacity, silver_capacity=region.silver_capacity,
        )  # fmt: skip


def nearest_players(
    npcs: Floats, players: Floats, *, within: float = np.inf
) -> tuple[Floats, np.ndarray[Any, np.dtype[np.intp]]]:
    """Each NPC's distance to its nearest player within `within` metres and that player's row
    (inf and -1: no player that close).

    A k-d tree over the players, queried with every NPC on every core: O(N log P), not the
    N x P matrix of all distances (10,000 x 200 floats at every frame). Bounding the search by
    the widest band lets the tree skip the NPCs no player is near, most of a region."""
    count = len(npcs)
    if count == 0 or len(players) == 0:
        return np.full(count, np.inf), np.full(count, -1, dtype=np.intp)
    distance, index = cKDTree(players).query(npcs, k=1, distance_upper_bound=within, workers=-1)
    index = np.asarray(index, dtype=np.intp)
    index[index == len(players)] = -1  # scipy's "none within the bound"
    return np.asarray(distance, dtype=np.float64), index


def tiers_assign(distance: Floats, previous: Codes, boost: Codes, policy: TierPolicy) -> Codes:
    """The tier code of every NPC (GOLD, SILVER, BRONZE), from its nearest player's distance,
    its previous tier (hysteresis), its boost (tiers it is raised) and the region's capacities."""
    tier = np.full(len(distance), BRONZE, dtype=np.int8)
    silver = (distance <= policy.silver_enter_m) | ((previous <= SILVER) & (distance <= policy.silver_exit_m))
    gold = (distance <= policy.gold_enter_m) | ((previous == GOLD) & (distance <= policy.gold_exit_m))
    tier[silver] = SILVER
    tier[gold] = GOLD
    if boost.any():
        tier = np.maximum(tier - boost, GOLD).astype(np.int8)
    for level, capacity in ((GOLD, policy.gold_capacity), (SILVER, policy.silver_capacity)):
        members = np.flatnonzero(tier == level)
        if len(members) > capacity:
            # The closest `capacity` keep the tier; argpartition, not a full sort.
            farthest = members[np.argpartition(distance[members], capacity)[capacity:]]
            tier[farthest] = level + 1
    return tier


@dataclass(frozen=True)
class TierChange:
    npc_id: str
    tier: str
    previous: str | None  # None: first placed
    distance_m: float | None  # None: no player within the Silver exit band
    player_id: str | None  # the nearest player


@dataclass
class TierUpdate:
    changes: list[TierChange]
    counts: dict[str, int]


@dataclass
class RegionTiers:
    """One region's tiers from frame to frame (the bridge keeps one per region it is sent)."""

    region: str
    policy: TierPolicy = field(default_factory=TierPolicy)
    ids: list[str] = field(default_factory=list)
    tiers: Codes = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    by_id: dict[str, int] = field(default_factory=dict)

    def tier_of(self, npc_id: str) -> str | None:
        index = self.by_id.get(npc_id)
        return None if index is None else TIER_NAMES[int(self.tiers[index])]

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.tiers, minlength=3)
        return {name: int(found[code]) for code, name in enumerate(TIER_NAMES)}

    def update(
        self,
        *,
        npc_ids: list[str],
        npcs: Floats,
        player_ids: list[str],
        players: Floats,
        boosted: set[str] | frozenset[str] = frozenset(),
    ) -> TierUpdate:
        """Apply one frame: every NPC listed gets its tier, and one it had not placed before is
        reported as a change from None; NPCs the frame leaves out leave the region's tiers."""
        if npc_ids == self.ids:  # the usual case: the same NPCs in the same order
            previous = self.tiers
        else:
            previous = np.full(len(npc_ids), UNSEEN, dtype=np.int8)
            for row, npc_id in enumerate(npc_ids):
                index = self.by_id.get(npc_id)
                if index is not None:
                    previous[row] = self.tiers[index]
            self.ids, self.by_id = list(npc_ids), {npc_id: row for row, npc_id in enumerate(npc_ids)}
        boost = np.zeros(len(npc_ids), dtype=np.int8)
        for npc_id in boosted:
            found = self.by_id.get(npc_id)
            if found is not None:
                boost[found] = 1
        # Beyond the Silver exit band every NPC is Bronze, whatever its distance.
        distance, nearest = nearest_players(npcs, players, within=self.policy.silver_exit_m)
        tiers = tiers_assign(distance, previous, boost, self.policy)
        changes = [
            TierChange(
                npc_id=npc_ids[row],
                tier=TIER_NAMES[tiers[row]],
                previous=None if previous[row] == UNSEEN else TIER_NAMES[previous[row]],
                distance_m=None if nearest[row] < 0 else round(float(distance[row]), 2),
                player_id=None if nearest[row] < 0 else player_ids[nearest[row]],
            )  # fmt: skip
            for row in np.flatnonzero(tiers != previous)
        ]
        self.tiers = tiers
        return TierUpdate(changes=changes, counts=self.counts())


# --- The live service: region states per bridge process, published in Redis -----------------

# Every placed NPC's tier (HASH npc slug -> tier), for a turn on any bridge process.
TIERS_KEY = "tiers:npc"
# Per region: tier counts and when they were computed (HASH), and their recent history for the
# dashboard's plot (LIST of JSON snapshots, newest first).
REGION_KEY = "tiers:region:{region}"
HISTORY_KEY = "tiers:history:{region}"
HISTORY_EVERY_S = 5.0
HISTORY_KEPT = 720  # an hour at one snapshot every 5 s
# A region's bands and its boosted NPCs (quest flags) are read from Postgres this often at most.
REGION_CONFIG_TTL_S = 30.0
# The players' bonds (memory.tiers.bonds_key) are read from Redis this often at most per region:
# they change when a conversation is consolidated, minutes apart.
BONDS_TTL_S = 5.0
# Gold promotions prefetched per frame (the rest are prefetched by their first turn).
PREFETCH_PER_FRAME = 16


class UnknownRegion(Exception):
    """A positions frame for a region that is not in the database."""


@dataclass
class _RegionConfig:
    policy: TierPolicy
    boosted: frozenset[str]
    read_at: float


def _region_config_read(region: str) -> _RegionConfig:
    from console.models import NPC, Region

    found = Region.objects.filter(slug=region).first()
    if found is None:
        raise UnknownRegion(region)
    # A set flag (true, a number other than 0, a text) marks an NPC some quest needs now.
    boosted = frozenset(
        slug
        for slug, flags in NPC.objects.filter(region=found)
        .exclude(quest_flags={})
        .values_list("slug", "quest_flags")
        if any(flags.values())
    )
    return _RegionConfig(policy=TierPolicy.for_region(found), boosted=boosted, read_at=time.monotonic())


_regions: dict[str, RegionTiers] = {}
_configs: dict[str, _RegionConfig] = {}
_history_at: dict[str, float] = {}
_bonds: dict[str, tuple[frozenset[str], float]] = {}  # region -> (bonded NPCs, read at)


def tiers_forget() -> None:
    """Drop this process's region states (tests; a region's bands changed in the admin)."""
    _regions.clear()
    _configs.clear()
    _history_at.clear()
    _bonds.clear()


def tier_local(npc_id: str) -> str | None:
    """The NPC's tier as placed by this process, if it placed it."""
    for state in _regions.values():
        tier = state.tier_of(npc_id)
        if tier is not None:
            return tier
    return None


async def tier_current(redis: Redis, npc_id: str) -> str | None:
    """The NPC's tier: this process's, else the one another bridge process published."""
    # Imported here: the computation above runs without Django set up (bench.tiers).
    from memory.tiers import redis_text

    tier = tier_local(npc_id)
    if tier is None:
        raw = await redis.hget(TIERS_KEY, npc_id)
        tier = None if raw is None else redis_text(raw)
    return tier


async def bonded_npcs(redis: Redis, player_ids: list[str], *, minimum: float) -> frozenset[str]:
    """NPCs whose bond with one of these players is at least `minimum` (memory.tiers.bond_strength)."""
    from memory.tiers import bonds_key, redis_text

    if not player_ids:
        return frozenset()
    async with redis.pipeline(transaction=False) as pipe:
        for player in player_ids:
            pipe.zrangebyscore(bonds_key(player), minimum, "+inf")
        found = await pipe.execute()
    return frozenset(redis_text(npc) for npcs in found for npc in npcs)


async def _region_bonds(redis: Redis, region: str, player_ids: list[str]) -> frozenset[str]:
    from django.conf import settings

    cached = _bonds.get(region)
    if cached is None or time.monotonic() - cached[1] > BONDS_TTL_S:
        cached = (await bonded_npcs(redis, player_ids, minimum=settings.TIER_BOND_MIN), time.monotonic())
        _bonds[region] = cached
    return cached[0]


def _points(positions: list[Any]) -> tuple[list[str], Floats]:
    ids = [position.id for position in positions]
    points = np.array([(p.x, p.y, p.z) for p in positions], dtype=np.float64).reshape(-1, 3)
    return ids, points


async def tiers_apply(redis: Redis, frame: Any) -> TierUpdate:
    """One `world.positions` frame (bridge.protocol.WorldPositions): the region's new tiers,
    published (Redis, Prometheus); returns what changed. Raises UnknownRegion."""
    from channels.db import database_sync_to_async

    from inference import metrics

    config = _configs.get(frame.region)
    if config is None or time.monotonic() - config.read_at > REGION_CONFIG_TTL_S:
        config = await database_sync_to_async(_region_config_read)(frame.region)
        _configs[frame.region] = config
    state = _regions.setdefault(frame.region, RegionTiers(region=frame.region))
    state.policy = config.policy
    npc_ids, npcs = _points(frame.npcs)
    player_ids, players = _points(frame.players)
    # Raised a tier: NPCs a quest needs now, and NPCs with a strong bond to a player present.
    boosted = config.boosted | await _region_bonds(redis, frame.region, player_ids)
    started = time.perf_counter()
    update = state.update(npc_ids=npc_ids, npcs=npcs, player_ids=player_ids, players=players, boosted=boosted)
    metrics.TIER_SECONDS.observe(time.perf_counter() - started)
    for tier, count in update.counts.items():
        metrics.NPC_TIERS.labels(region=frame.region, tier=tier).set(count)
    for change in update.changes:
        metrics.TIER_CHANGES.labels(tier=change.tier).inc()
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        if update.changes:
            pipe.hset(TIERS_KEY, mapping={change.npc_id: change.tier for change in update.changes})
        pipe.hset(
            REGION_KEY.format(region=frame.region),
            mapping={
                **{tier: str(count) for tier, count in update.counts.items()},
                "players": str(len(player_ids)),
                "at": str(now),
            },
        )
        if now - _history_at.get(frame.region, 0.0) >= HISTORY_EVERY_S:
            _history_at[frame.region] = now
            key = HISTORY_KEY.format(region=frame.region)
            pipe.lpush(key, json.dumps({"at": round(now, 1), **update.counts}))
            pipe.ltrim(key, 0, HISTORY_KEPT - 1)
        await pipe.execute()
    return update


def tier_frames(region: str, update: TierUpdate, *, per_frame: int = 500) -> list[dict[str, Any]]:
    """The `npc.tier` frames telling a client what changed (docs/protocol.md), in chunks."""
    entries = [
        {"npc_id": c.npc_id, "tier": c.tier, "previous": c.previous, "distance_m": c.distance_m,
         "player_id": c.player_id}
        for c in update.changes
    ]  # fmt: skip
    return [
        {"type": "npc.tier", "region": region, "changes": entries[start : start + per_frame],
         "counts": update.counts}
        for start in range(0, len(entries), per_frame)
    ]  # fmt: skip


def gold_promotions(update: TierUpdate) -> list[TierChange]:
    """The changes into Gold near a player: their memory and lore are worth fetching now."""
    promoted = [c for c in update.changes if c.tier == "gold" and c.previous != "gold" and c.player_id]
    return promoted[:PREFETCH_PER_FRAME]
