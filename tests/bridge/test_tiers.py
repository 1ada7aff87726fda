"""Activation tiers through the bridge: `world.positions` frames answered with `npc.tier`, the
tier a turn runs at, the tiers published in Redis for other bridge processes, unknown regions
refused, and a Gold promotion's prefetch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from console.services.keys import game_key_create
from inference import context
from inference.activation import tier_frames, tiers_forget, tiers_key
from tests.bridge.conftest import connect, frames_until, send, started
from tests.factories import NPCFactory

# Transactional: each consumer reaches the database through its own connection, as in Daphne.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def positions_key(db) -> str:
    # A game server: it reports positions and acts for its players (the players scope).
    _, secret = game_key_create(name="game server", scopes=["play", "positions", "players"])
    return secret


@pytest.fixture(autouse=True)
def _fresh_tiers():
    tiers_forget()
    yield
    tiers_forget()


def _frame(region: str, npcs: dict[str, float], players: dict[str, float]) -> dict[str, object]:
    """A positions frame with everyone on the x axis."""
    return {
        "type": "world.positions",
        "region": region,
        "players": [{"id": name, "x": x, "y": 0.0, "z": 0.0} for name, x in players.items()],
        "npcs": [{"id": name, "x": x, "y": 0.0, "z": 0.0} for name, x in npcs.items()],
    }


def test_positions_move_npcs_between_tiers_and_turns_run_at_their_tier(
    positions_key, no_worker, redis_client
):
    near = NPCFactory(slug="ghoul-near")
    far = NPCFactory(slug="ghoul-far", archetype=near.archetype, region=near.region)
    region = near.region.slug

    async def scenario():
        comm = connect(positions_key)
        await started(comm, player_id="walker")
        await send(comm, _frame(region, {"ghoul-near": 10.0, "ghoul-far": 400.0}, {"walker": 0.0}))
        placed = (await frames_until(comm, "npc.tier"))[-1]
        await send(comm, {"type": "npc.say", "request_id": "r1", "npc_id": "ghoul-far", "text": "Hello?"})
        far_turn = await frames_until(comm, "turn.end")
        # The player walks away from the near ghoul: Gold to Silver (beyond 35 m, inside 75 m).
        await send(comm, _frame(region, {"ghoul-near": 50.0, "ghoul-far": 400.0}, {"walker": 0.0}))
        moved = (await frames_until(comm, "npc.tier"))[-1]
        await send(comm, _frame("no-such-region", {}, {}))
        unknown = (await frames_until(comm, "error"))[-1]
        await comm.disconnect()
        return placed, far_turn, moved, unknown

    placed, far_turn, moved, unknown = async_to_sync(scenario)()

    assert {c["npc_id"]: (c["previous"], c["tier"]) for c in placed["changes"]} == {
        "ghoul-near": (None, "gold"),
        "ghoul-far": (None, "bronze"),
    }
    assert placed["counts"] == {"gold": 1, "silver": 0, "bronze": 1}
    start = next(frame for frame in far_turn if frame["type"] == "turn.start")
    assert start["tier"] == "bronze"  # a Bronze NPC barks: no model
    assert moved["changes"] == [
        {
            "npc_id": "ghoul-near",
            "tier": "silver",
            "previous": "gold",
            "distance_m": 50.0,
            "player_id": "walker",
        }
    ]
    # Published for turns on other bridge processes.
    published = tiers_key(world=near.region.world.slug, region=region)
    assert redis_client.hget(published, "ghoul-near") == b"silver"
    assert redis_client.hget(published, far.slug) == b"bronze"
    assert unknown["code"] == "unknown_region"
    assert "no-such-region" in unknown["message"]


def test_a_gold_promotion_loads_the_npcs_turn_context_before_it_is_spoken_to(positions_key, no_worker):
    npc = NPCFactory(slug="count-near")
    context.turn_context_forget()

    async def scenario():
        comm = connect(positions_key)
        await started(comm, player_id="walker")
        await send(comm, _frame(npc.region.slug, {"count-near": 5.0, "stranger": 6.0}, {"walker": 0.0}))
        placed = (await frames_until(comm, "npc.tier"))[-1]
        for _ in range(100):  # the prefetch runs in the background
            if "count-near" in context._context_cache:
                break
            await asyncio.sleep(0.05)
        await comm.disconnect()
        return placed

    placed = async_to_sync(scenario)()

    assert {c["npc_id"] for c in placed["changes"] if c["tier"] == "gold"} == {"count-near"}
    assert placed["ignored"] == 1  # positions may name NPCs the console lacks: not placed
    assert "count-near" in context._context_cache  # prefetched
    assert "stranger" not in context._context_cache


def test_a_strong_bond_with_a_player_present_raises_an_npc_a_tier(db, redis_client, settings):
    from types import SimpleNamespace

    from redis.asyncio import Redis

    from inference.activation import bonds_key, tiers_apply

    friend = NPCFactory(slug="ghoul-friend")
    stranger = NPCFactory(slug="ghoul-stranger", archetype=friend.archetype, region=friend.region)
    redis_client.zadd(bonds_key("alice"), {friend.slug: 0.8, stranger.slug: settings.TIER_BOND_MIN - 0.1})
    redis_client.zadd(bonds_key("bob"), {stranger.slug: 0.9})  # bob is not in the region

    def point(name: str, x: float) -> SimpleNamespace:
        return SimpleNamespace(id=name, x=x, y=0.0, z=0.0)

    async def apply():
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            frame = SimpleNamespace(  # both at 50 m from alice: Silver by distance
                region=friend.region.slug, npcs=[point(friend.slug, 50.0), point(stranger.slug, 50.0)],
                players=[point("alice", 0.0)],
            )  # fmt: skip
            return await tiers_apply(redis, frame)
        finally:
            await redis.aclose()

    update = async_to_sync(apply)()

    assert {change.npc_id: change.tier for change in update.changes} == {
        friend.slug: "gold",
        stranger.slug: "silver",
    }


def _apply(settings, region: str, npcs: dict[Any, float], players: dict[str, float]):
    """tiers_apply on a positions frame (everyone on the x axis), as the bridge calls it."""
    from types import SimpleNamespace

    from redis.asyncio import Redis

    from inference.activation import tiers_apply

    def point(name: str, x: float) -> SimpleNamespace:
        return SimpleNamespace(id=name, x=x, y=0.0, z=0.0)

    async def apply():
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            frame = SimpleNamespace(
                region=region, npcs=[point(name, x) for name, x in npcs.items()],
                players=[point(name, x) for name, x in players.items()],
            )  # fmt: skip
            return await tiers_apply(redis, frame)
        finally:
            await redis.aclose()

    return async_to_sync(apply)()


def _tier_current(settings, npc: str, **where: str | None) -> str | None:
    from redis.asyncio import Redis

    from inference.activation import tier_current

    async def read():
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            return await tier_current(redis, npc, **where)
        finally:
            await redis.aclose()

    return async_to_sync(read)()


def test_positions_of_another_regions_npc_are_ignored_and_counted(db, redis_client, settings):
    # Issue 17 item 6: any id a frame named went into one global hash with no TTL, so a frame for
    # one region could overwrite another region's NPC, and made-up ids stayed in Redis for good.
    from inference import metrics

    mine = NPCFactory(slug="ghoul-mine")
    theirs = NPCFactory(slug="ghoul-theirs", archetype=mine.archetype)
    home, away = mine.region, theirs.region
    ignored_before = metrics.TIER_IGNORED.labels(region=home.slug)._value.get()
    _apply(settings, away.slug, {theirs.slug: 5.0}, {"alice": 0.0})  # Gold in its own region
    tiers_forget()  # another bridge process places the other region

    update = _apply(settings, home.slug, {mine.slug: 5.0, theirs.slug: 500.0, "made-up": 1.0}, {"bob": 0.0})
    frames = tier_frames(home.slug, update)
    tiers_forget()  # a turn on a third process reads Redis only

    assert {change.npc_id for change in update.changes} == {mine.slug}
    assert update.ignored == 2
    assert frames[0]["ignored"] == 2
    assert metrics.TIER_IGNORED.labels(region=home.slug)._value.get() == ignored_before + 2
    home_key = tiers_key(world=home.world.slug, region=home.slug)
    away_key = tiers_key(world=away.world.slug, region=away.slug)
    assert redis_client.hgetall(home_key) == {b"ghoul-mine": b"gold"}
    assert redis_client.hgetall(away_key) == {b"ghoul-theirs": b"gold"}  # not made Bronze
    assert not redis_client.exists("tiers:npc")  # no global hash any more
    assert 0 < redis_client.ttl(home_key) <= settings.TIERS_TTL_S
    assert 0 < redis_client.ttl(away_key) <= settings.TIERS_TTL_S
    assert _tier_current(settings, theirs.slug, region=away.slug) == "gold"
    assert _tier_current(settings, theirs.slug, region=home.slug) is None  # not an NPC of that region
    assert _tier_current(settings, theirs.slug) == "gold"  # without a region: the NPC's own
    assert _tier_current(settings, "made-up") is None


def test_an_npc_a_frame_leaves_out_loses_its_published_tier(db, redis_client, settings):
    staying = NPCFactory()
    leaving = NPCFactory(archetype=staying.archetype, region=staying.region)
    key = tiers_key(world=staying.region.world.slug, region=staying.region.slug)

    _apply(settings, staying.region.slug, {staying.slug: 5.0, leaving.slug: 5.0}, {"alice": 0.0})
    _apply(settings, staying.region.slug, {staying.slug: 50.0}, {"alice": 0.0})

    assert redis_client.hgetall(key) == {staying.slug.encode(): b"silver"}


def test_tiers_written_again_in_full_when_their_key_expired(db, redis_client, settings):
    # The bridge process keeps the region's state; only changes are written each frame, so a
    # key that expired while the game server was quiet must be filled again whole.
    npc = NPCFactory()
    other = NPCFactory(archetype=npc.archetype, region=npc.region)
    key = tiers_key(world=npc.region.world.slug, region=npc.region.slug)
    _apply(settings, npc.region.slug, {npc.slug: 5.0, other.slug: 50.0}, {"alice": 0.0})
    redis_client.delete(key)  # expired

    _apply(settings, npc.region.slug, {npc.slug: 6.0, other.slug: 50.0}, {"alice": 0.0})

    assert redis_client.hgetall(key) == {npc.slug.encode(): b"gold", other.slug.encode(): b"silver"}
