"""Activation tiers through the bridge: `world.positions` frames answered with `npc.tier`, the
tier a turn runs at, the tiers published in Redis for other bridge processes, unknown regions
refused, and a Gold promotion's prefetch."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync

from console.services.keys import game_key_create
from inference import context
from inference.activation import TIERS_KEY, tiers_forget
from tests.bridge.conftest import connect, frames_until, send, started
from tests.factories import NPCFactory

# Transactional: each consumer reaches the database through its own connection, as in Daphne.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def positions_key(db) -> str:
    _, secret = game_key_create(name="game server", scopes=["play", "positions"])
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
    assert redis_client.hget(TIERS_KEY, "ghoul-near") == b"silver"
    assert redis_client.hget(TIERS_KEY, far.slug) == b"bronze"
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

    assert {c["npc_id"] for c in placed["changes"] if c["tier"] == "gold"} == {"count-near", "stranger"}
    assert "count-near" in context._context_cache  # prefetched
    assert "stranger" not in context._context_cache  # positions may name NPCs the console lacks


def test_a_strong_bond_with_a_player_present_raises_an_npc_a_tier(db, redis_client, settings):
    from types import SimpleNamespace

    from redis.asyncio import Redis

    from inference.activation import tiers_apply
    from memory.tiers import bonds_key

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
