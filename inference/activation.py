"""Activation tiers: which NPCs get the model, and how much of it (memory.pairs are the
memory's hot, warm and archive tiers, another thing).

Gold NPCs speak with full replies and memory, Silver ones briefly, Bronze ones only bark (no
model; inference.sampling.tier_sampling). A game server sends `world.positions` frames for a
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
from django.conf import settings
from scipy.spatial import cKDTree

from console.redis_clients import redis_text
from console.validators import tier_bands_check
from inference import metrics

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
        tier_bands_check(
            gold_enter_m=self.gold_enter_m, gold_exit_m=self.gold_exit_m,
            silver_enter_m=self.silver_enter_m, silver_exit_m=self.silver_exit_m,
            gold_capacity=self.gold_capacity, silver_capacity=self.silver_capacity,
        )  # fmt: skip

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
    removed: list[str] = field(default_factory=list)  # placed before, left out of this frame
    ignored: int = 0  # positions of ids that are not NPCs of the region (tiers_apply)


class BadPositions(ValueError):
    """A frame's positions cannot be placed (a coordinate that is not a finite number, an NPC
    listed twice); the region's tiers are left as they were."""


def _positions_check(ids: list[str], points: Floats, what: str) -> None:
    if points.shape != (len(ids), 3):
        raise BadPositions(
            f"{what}: {len(ids)} ids need {len(ids)} x 3 coordinates, got shape {points.shape}"
        )
    if not np.isfinite(points).all():  # one pass over the array (the hot path); rows only to explain
        bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
        row = int(bad[0])
        raise BadPositions(
            f"{what} {ids[row]!r} is at {points[row].tolist()}: positions must be finite numbers "
            f"(no NaN or Infinity; {len(bad)} such)"
        )


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
        reported as a change from None; NPCs the frame leaves out leave the region's tiers.

        Raises BadPositions (a ValueError) for a coordinate that is not finite or an NPC listed
        twice. Everything is computed before the state is assigned, so a frame that raises
        leaves the region as the last good frame left it."""
        _positions_check(npc_ids, npcs, "npc")
        _positions_check(player_ids, players, "player")
        if npc_ids == self.ids:  # the usual case: the same NPCs in the same order
            previous, by_id, removed = self.tiers, self.by_id, []
        else:
            by_id = {npc_id: row for row, npc_id in enumerate(npc_ids)}
            if len(by_id) != len(npc_ids):
                raise BadPositions("an NPC is listed twice in the frame: list each NPC once")
            previous = np.full(len(npc_ids), UNSEEN, dtype=np.int8)
            for row, npc_id in enumerate(npc_ids):
                index = self.by_id.get(npc_id)
                if index is not None:
                    previous[row] = self.tiers[index]
            removed = [npc_id for npc_id in self.ids if npc_id not in by_id]
        boost = np.zeros(len(npc_ids), dtype=np.int8)
        for npc_id in boosted:
            found = by_id.get(npc_id)
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
        # Only now, with nothing left that can raise: the ids, their rows and tiers together.
        if by_id is not self.by_id:
            self.ids, self.by_id = list(npc_ids), by_id
        self.tiers = tiers
        return TierUpdate(changes=changes, counts=self.counts(), removed=removed)


# --- The live service: region states per bridge process, published in Redis -----------------

# Per region, its NPCs' tiers (HASH npc slug -> tier), for a turn on any bridge process. Keyed
# by world too: region slugs are unique per world only. Expires settings.TIERS_TTL_S after the
# region's last frame, so a region nobody reports any more leaves nothing behind.
TIERS_KEY = "tiers:npc:{world}:{region}"
# Per region: tier counts and when they were computed (HASH), and their recent history for the
# dashboard's plot (LIST of JSON snapshots, newest first); both expire with the history's hour.
REGION_KEY = "tiers:region:{world}:{region}"
HISTORY_KEY = "tiers:history:{world}:{region}"
HISTORY_EVERY_S = 5.0
HISTORY_KEPT = 720  # an hour at one snapshot every 5 s
HISTORY_TTL_S = 3600
# A region's bands, NPCs and boosted NPCs (quest flags) are read from Postgres this often at most.
REGION_CONFIG_TTL_S = 30.0
# The players' bonds (bonds_key) are read from Redis this often at most per region:
# they change when a conversation is consolidated, minutes apart.
BONDS_TTL_S = 5.0
# Gold promotions prefetched per frame (the rest are prefetched by their first turn).
PREFETCH_PER_FRAME = 16


def tiers_key(*, world: str, region: str) -> str:
    return TIERS_KEY.format(world=world, region=region)


class UnknownRegion(Exception):
    """A positions frame for a region that is not in the database, or whose slug names a
    region in more than one world (the frame names a slug only). The message says which."""


@dataclass
class _RegionConfig:
    world: str
    policy: TierPolicy
    npcs: frozenset[str]  # the region's NPCs: positions of any other id are ignored
    boosted: frozenset[str]
    read_at: float


def _region_read(region: str) -> Region:
    # Imported here: this module computes tiers without Django set up (bench.tiers); models load
    # only once apps are ready.
    from console.models import Region

    found = list(Region.objects.filter(slug=region).select_related("world")[:10])
    if not found:
        raise UnknownRegion(f"no region has slug {region!r}: use a region's slug from the console")
    if len(found) > 1:
        # Refused rather than guessed: placing one world's NPCs from a frame meant for the other
        # would move the wrong NPCs' tiers.
        worlds = ", ".join(sorted(candidate.world.slug for candidate in found))
        raise UnknownRegion(
            f"region slug {region!r} names a region in {len(found)} worlds ({worlds}); a positions "
            "frame names a slug only: give the region a slug no other world uses"
        )
    return found[0]


def _region_config_read(region: str) -> _RegionConfig:
    # Imported here: this module computes tiers without Django set up (bench.tiers); models load
    # only once apps are ready.
    from console.models import NPC

    found = _region_read(region)
    npcs, boosted = set(), set()
    for slug, flags in NPC.objects.filter(region=found).values_list("slug", "quest_flags"):
        npcs.add(slug)
        # A set flag (true, a number other than 0, a text) marks an NPC some quest needs now.
        if any(flags.values()):
            boosted.add(slug)
    return _RegionConfig(
        world=found.world.slug, policy=TierPolicy.for_region(found), npcs=frozenset(npcs),
        boosted=frozenset(boosted), read_at=time.monotonic(),
    )  # fmt: skip


def _npc_home_read(npc_id: str) -> tuple[str, str] | None:
    """The NPC's (world, region) slugs, None for an NPC the database lacks."""
    # Imported here: this module computes tiers without Django set up (bench.tiers); models load
    # only once apps are ready.
    from console.models import NPC

    found = NPC.objects.filter(slug=npc_id).values_list("region__world__slug", "region__slug").first()
    return None if found is None else (found[0], found[1])


def _region_world_read(region: str) -> str | None:
    """The world of the region with this slug; None when none or several worlds have one."""
    try:
        return _region_read(region).world.slug
    except UnknownRegion:
        return None


# Region slug -> its state and config: a slug two worlds share is refused, so it names one.
_regions: dict[str, RegionTiers] = {}
_configs: dict[str, _RegionConfig] = {}
_history_at: dict[str, float] = {}
_bonds: dict[str, tuple[frozenset[str], float]] = {}  # region -> (bonded NPCs, read at)
# For tier_current on processes that got no frame for the region: (answer, monotonic read at).
_worlds: dict[str, tuple[str | None, float]] = {}
_homes: dict[str, tuple[tuple[str, str], float]] = {}  # npc -> ((world, region), read at)


def tiers_forget() -> None:
    """Drop this process's region states (tests; a region's bands changed in the admin)."""
    _regions.clear()
    _configs.clear()
    _history_at.clear()
    _bonds.clear()
    _worlds.clear()
    _homes.clear()


def tier_local(npc_id: str, *, region: str | None = None) -> str | None:
    """The NPC's tier as placed by this process, if it placed it (in `region`, if given)."""
    states = _regions.values() if region is None else [_regions[region]] if region in _regions else []
    for state in states:
        tier = state.tier_of(npc_id)
        if tier is not None:
            return tier
    return None


async def _tiers_home(npc_id: str, region: str | None, world: str | None) -> tuple[str, str] | None:
    """Where the NPC's published tier lives: (world, region), from what the caller knows, this
    process's caches, else Postgres (cached REGION_CONFIG_TTL_S)."""
    from channels.db import database_sync_to_async

    now = time.monotonic()
    if region is not None:
        if world is not None:
            return world, region
        config = _configs.get(region)
        if config is not None:
            return config.world, region
        cached = _worlds.get(region)
        if cached is None or now - cached[1] > REGION_CONFIG_TTL_S:
            cached = (await database_sync_to_async(_region_world_read)(region), now)
            _worlds[region] = cached
        return None if cached[0] is None else (cached[0], region)
    home = _homes.get(npc_id)
    if home is None or now - home[1] > REGION_CONFIG_TTL_S:
        found = await database_sync_to_async(_npc_home_read)(npc_id)
        if found is None:
            return None  # not cached: ids the database lacks must not fill this process's memory
        home = (found, now)
        _homes[npc_id] = home
    return home[0]


def bonds_key(player: str) -> str:
    """ZSET npc -> bond strength of every NPC `player` has a relationship card with (outside
    memory's `mem:` pair namespace). Memory writes it when it consolidates a pair
    (memory.consolidation, memory.pairs.bond_strength) and drops it when it forgets a player;
    activation reads it here: a strong bond raises the NPC a tier while the player is near."""
    return f"mem-bonds:{player}"


async def tier_current(
    redis: Redis, npc_id: str, *, region: str | None = None, world: str | None = None
) -> str | None:
    """The NPC's tier in its region: this process's, else the one another bridge process
    published. Pass the NPC's region (and world) when known; without them the NPC's region is
    read from Postgres (cached)."""
    tier = tier_local(npc_id, region=region)
    if tier is not None:
        return tier
    home = await _tiers_home(npc_id, region, world)
    if home is None:
        return None
    raw = await redis.hget(tiers_key(world=home[0], region=home[1]), npc_id)
    return None if raw is None else redis_text(raw)


async def bonded_npcs(redis: Redis, player_ids: list[str], *, minimum: float) -> frozenset[str]:
    """NPCs whose bond with one of these players is at least `minimum` (memory.pairs.bond_strength)."""
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


def _points(positions: list[Any], *, only: frozenset[str] | None = None) -> tuple[list[str], Floats]:
    """Ids and coordinates; with `only`, just the positions of those ids, each id once."""
    if only is not None:
        kept: dict[str, Any] = {}
        for position in positions:
            if position.id in only:
                kept.setdefault(position.id, position)
        positions = list(kept.values())
    ids = [position.id for position in positions]
    points = np.array([(p.x, p.y, p.z) for p in positions], dtype=np.float64).reshape(-1, 3)
    return ids, points


async def _region_config(region: str) -> _RegionConfig:
    from channels.db import database_sync_to_async

    config = _configs.get(region)
    if config is None or time.monotonic() - config.read_at > REGION_CONFIG_TTL_S:
        config = await database_sync_to_async(_region_config_read)(region)
        _configs[region] = config
    return config


async def tiers_apply(redis: Redis, frame: Any) -> TierUpdate:
    """One `world.positions` frame (bridge.protocol.WorldPositions): the region's new tiers,
    published (Redis, Prometheus); returns what changed. Positions of ids that are not NPCs of
    the region are ignored (counted in the update and in Prometheus). Raises UnknownRegion, and
    BadPositions (a ValueError) with the region's state and Redis untouched."""
    config = await _region_config(frame.region)
    state = _regions.setdefault(frame.region, RegionTiers(region=frame.region))
    state.policy = config.policy
    npc_ids, npcs = _points(frame.npcs, only=config.npcs)
    player_ids, players = _points(frame.players)
    ignored = len(frame.npcs) - len(npc_ids)
    # Raised a tier: NPCs a quest needs now, and NPCs with a strong bond to a player present.
    boosted = config.boosted | await _region_bonds(redis, frame.region, player_ids)
    started = time.perf_counter()
    update = state.update(npc_ids=npc_ids, npcs=npcs, player_ids=player_ids, players=players, boosted=boosted)
    metrics.TIER_SECONDS.observe(time.perf_counter() - started)
    update.ignored = ignored
    if ignored:
        metrics.TIER_IGNORED.labels(region=frame.region).inc(ignored)
    for tier, count in update.counts.items():
        metrics.NPC_TIERS.labels(region=frame.region, tier=tier).set(count)
    for change in update.changes:
        metrics.TIER_CHANGES.labels(tier=change.tier).inc()
    await _tiers_publish(redis, state, update, world=config.world, players=len(player_ids),
                         ttl_s=settings.TIERS_TTL_S)  # fmt: skip
    return update


async def _tiers_publish(
    redis: Redis, state: RegionTiers, update: TierUpdate, *, world: str, players: int, ttl_s: int
) -> None:
    """The region's tiers, counts and history into Redis. Only what changed is written, unless
    the key holds fewer tiers than the region has (it expired while no frame came, Redis
    restarted, another process wrote it): then all of them."""
    now = time.time()
    key = tiers_key(world=world, region=state.region)
    region_key = REGION_KEY.format(world=world, region=state.region)
    async with redis.pipeline(transaction=True) as pipe:
        if update.changes:
            pipe.hset(key, mapping={change.npc_id: change.tier for change in update.changes})
        if update.removed:
            pipe.hdel(key, *update.removed)
        pipe.expire(key, ttl_s)
        pipe.hlen(key)
        pipe.hset(
            region_key,
            mapping={**{tier: str(count) for tier, count in update.counts.items()}, "players": str(players),
                     "at": str(now)},
        )  # fmt: skip
        pipe.expire(region_key, HISTORY_TTL_S)
        history = HISTORY_KEY.format(world=world, region=state.region)
        if now - _history_at.get(history, 0.0) >= HISTORY_EVERY_S:
            _history_at[history] = now
            pipe.lpush(history, json.dumps({"at": round(now, 1), **update.counts}))
            pipe.ltrim(history, 0, HISTORY_KEPT - 1)
            pipe.expire(history, HISTORY_TTL_S)
        published = await pipe.execute()
    held = int(published[int(bool(update.changes)) + int(bool(update.removed)) + 1])
    if held < len(state.ids):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    npc: TIER_NAMES[int(tier)] for npc, tier in zip(state.ids, state.tiers, strict=True)
                },
            )
            pipe.expire(key, ttl_s)
            await pipe.execute()


def tier_frames(region: str, update: TierUpdate, *, per_frame: int = 500) -> list[dict[str, Any]]:
    """The `npc.tier` frames telling a client what changed (docs/protocol.md), in chunks; each
    says how many of the frame's NPC positions were ignored (not NPCs of the region)."""
    entries = [
        {"npc_id": c.npc_id, "tier": c.tier, "previous": c.previous, "distance_m": c.distance_m,
         "player_id": c.player_id}
        for c in update.changes
    ]  # fmt: skip
    return [
        {"type": "npc.tier", "region": region, "changes": entries[start : start + per_frame],
         "counts": update.counts, "ignored": update.ignored}
        for start in range(0, len(entries), per_frame)
    ]  # fmt: skip


def gold_promotions(update: TierUpdate) -> list[TierChange]:
    """The changes into Gold near a player: their memory and lore are worth fetching now."""
    promoted = [c for c in update.changes if c.tier == "gold" and c.previous != "gold" and c.player_id]
    return promoted[:PREFETCH_PER_FRAME]
