"""Activation tiers: bands with hysteresis, boosts, per-region capacity (closest kept), frame to
frame bookkeeping, region settings (tests/bridge/test_tiers.py: through the bridge)."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.exceptions import ValidationError

from inference.activation import (
    BRONZE,
    GOLD,
    SILVER,
    UNSEEN,
    RegionTiers,
    TierPolicy,
    _region_config_read,
    nearest_players,
    tiers_assign,
)
from tests.factories import NPCFactory, RegionFactory

POLICY = TierPolicy(gold_enter_m=25, gold_exit_m=35, silver_enter_m=60, silver_exit_m=75)


def _walk(distances: list[float], policy: TierPolicy = POLICY) -> list[int]:
    """The tier of one NPC at each distance in turn, each frame remembering the last."""
    tier, seen = UNSEEN, []
    for distance in distances:
        tier = int(
            tiers_assign(np.array([distance]), np.array([tier], np.int8), np.zeros(1, np.int8), policy)[0]
        )
        seen.append(tier)
    return seen


def test_tiers_follow_the_distance_with_hysteresis_at_both_edges():
    approach = _walk([100, 70, 59, 30, 24, 30, 34, 36, 70, 74, 76])

    assert approach == [
        BRONZE,  # 100 m
        BRONZE,  # 70: not inside silver_enter yet
        SILVER,  # 59
        SILVER,  # 30: Silver does not become Gold before 25 m
        GOLD,  # 24
        GOLD,  # 30: inside the exit band, stays Gold
        GOLD,  # 34
        SILVER,  # 36: beyond gold_exit
        SILVER,  # 70: inside silver_exit
        SILVER,  # 74
        BRONZE,  # 76
    ]


def test_a_boost_raises_one_tier_and_capacity_keeps_the_closest():
    policy = TierPolicy(gold_capacity=3, silver_capacity=4)
    distance = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 50, 200], dtype=np.float64)
    previous = np.full(len(distance), UNSEEN, np.int8)
    boost = np.zeros(len(distance), np.int8)
    boost[9] = 1  # a quest giver at 50 m: Silver by distance, Gold by its quest
    boost[10] = 1  # a quest giver far away: Bronze by distance, Silver by its quest

    tiers = tiers_assign(distance, previous, boost, policy)

    gold = set(np.flatnonzero(tiers == GOLD))
    assert gold == {1, 5, 3}  # the three closest of the ten that want Gold (1, 2 and 3 m)
    assert set(np.flatnonzero(tiers == SILVER)) == {7, 0, 8, 4}  # the next closest four
    assert set(np.flatnonzero(tiers == BRONZE)) == {6, 2, 9, 10}  # overflow, farthest first


def test_without_players_every_npc_is_bronze():
    distance, nearest = nearest_players(np.zeros((3, 3)), np.zeros((0, 3)))

    tiers = tiers_assign(distance, np.full(3, GOLD, np.int8), np.zeros(3, np.int8), POLICY)

    assert list(nearest) == [-1, -1, -1]
    assert list(tiers) == [BRONZE] * 3


def test_a_region_reports_first_placements_then_only_changes_whatever_the_order():
    region = RegionTiers(region="fen", policy=POLICY)
    players = np.array([[0.0, 0.0, 0.0], [500.0, 0.0, 0.0]])
    npcs = np.array([[10.0, 0, 0], [50.0, 0, 0], [300.0, 0, 0]])

    first = region.update(npc_ids=["a", "b", "c"], npcs=npcs, player_ids=["p1", "p2"], players=players)
    same = region.update(npc_ids=["a", "b", "c"], npcs=npcs, player_ids=["p1", "p2"], players=players)
    # The next frame lists them in another order and "b" walked up to the second player.
    moved = region.update(
        npc_ids=["c", "b", "a"],
        npcs=np.array([[300.0, 0, 0], [480.0, 0, 0], [30.0, 0, 0]]),
        player_ids=["p1", "p2"],
        players=players,
    )

    assert [(c.npc_id, c.previous, c.tier, c.player_id) for c in first.changes] == [
        ("a", None, "gold", "p1"),
        ("b", None, "silver", "p1"),
        ("c", None, "bronze", None),  # no player within the Silver exit band (75 m)
    ]
    assert first.counts == {"gold": 1, "silver": 1, "bronze": 1}
    assert same.changes == []
    assert [(c.npc_id, c.previous, c.tier, c.distance_m, c.player_id) for c in moved.changes] == [
        ("b", "silver", "gold", 20.0, "p2")
    ]
    assert region.tier_of("a") == "gold"  # 30 m: kept by the hysteresis


def test_bands_out_of_order_are_refused_with_what_to_fix(db):
    with pytest.raises(ValueError, match="gold_enter_m <= gold_exit_m"):
        TierPolicy(gold_enter_m=40, gold_exit_m=35)
    region = RegionFactory(silver_enter_m=20)

    with pytest.raises(ValidationError, match="silver bands"):
        region.full_clean()


def test_npcs_with_a_quest_flag_set_are_boosted(db):
    npc = NPCFactory(quest_flags={"blood_debt": "accepted"})
    unset = NPCFactory(archetype=npc.archetype, region=npc.region, quest_flags={"met_player": False})
    plain = NPCFactory(archetype=npc.archetype, region=npc.region)

    config = _region_config_read(npc.region.slug)

    assert config.boosted == {npc.slug}
    assert {unset.slug, plain.slug}.isdisjoint(config.boosted)
    assert config.policy == TierPolicy.for_region(npc.region)


def test_a_frame_with_non_finite_coordinates_is_refused_and_leaves_the_region_as_it_was():
    # Issue 17 item 1: the ids were replaced before the k-d tree refused NaN, so the region was
    # half-written and a later lookup of an NPC past the old length raised IndexError.
    region = RegionTiers(region="fen", policy=POLICY)
    players = np.array([[0.0, 0.0, 0.0]])
    region.update(npc_ids=["a", "b"], npcs=np.array([[10.0, 0, 0], [50.0, 0, 0]]), player_ids=["p"],
                  players=players)  # fmt: skip
    placed = {npc: region.tier_of(npc) for npc in ("a", "b", "c", "d")}

    for npcs, where in (
        (np.array([[10.0, 0, 0], [np.nan, 0, 0], [1.0, 0, 0], [2.0, 0, 0]]), players),
        (np.array([[10.0, 0, 0], [50.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]]), np.array([[np.inf, 0, 0]])),
    ):
        with pytest.raises(ValueError, match="finite"):
            region.update(npc_ids=["d", "c", "b", "a"], npcs=npcs, player_ids=["p"], players=where)

        assert {npc: region.tier_of(npc) for npc in ("a", "b", "c", "d")} == placed
        assert region.counts() == {"gold": 1, "silver": 1, "bronze": 0}
    after = region.update(
        npc_ids=["a", "b", "c"], npcs=np.array([[10.0, 0, 0], [50.0, 0, 0], [1.0, 0, 0]]), player_ids=["p"],
        players=players,
    )  # fmt: skip

    assert [(c.npc_id, c.previous, c.tier) for c in after.changes] == [("c", None, "gold")]
    assert region.tier_of("b") == "silver"


def test_a_region_slug_two_worlds_share_is_refused_as_ambiguous(db):
    # Issue 17 item 12: a positions frame names a region by slug only, and slugs are unique per
    # world; the tiers of one world's "fen" must not be written over the other's.
    from inference.activation import UnknownRegion

    first, second = RegionFactory(slug="fen"), RegionFactory(slug="fen")
    alone = RegionFactory(slug="moor", world=first.world)

    with pytest.raises(UnknownRegion, match=r"fen.*2 worlds") as refused:
        _region_config_read("fen")
    config = _region_config_read("moor")

    assert first.world.slug in str(refused.value)
    assert second.world.slug in str(refused.value)
    assert config.world == alone.world.slug


def test_the_region_config_knows_its_npcs(db):
    npc = NPCFactory()
    other = NPCFactory(archetype=npc.archetype, region=npc.region)
    elsewhere = NPCFactory(archetype=npc.archetype)

    config = _region_config_read(npc.region.slug)

    assert config.npcs == {npc.slug, other.slug}
    assert elsewhere.slug not in config.npcs
