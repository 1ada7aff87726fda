from __future__ import annotations

import pytest

from console.models import AdapterScope, AdapterStatus
from inference.routing import NoHealthyWorker, adapter_route_pick, worker_for_archetype, workers_by_archetype
from tests.factories import AdapterFactory, NPCFactory, SubfactionFactory

WORKERS = ["http://w1:8100", "http://w2:8100", "http://w3:8100"]
ARCHETYPES = ["vampire", "werewolf", "zombie", "ghoul", "lich", "banshee", "wraith", "revenant"]


def test_affinity_is_stable_and_spread():
    first = workers_by_archetype(ARCHETYPES, WORKERS)

    assert workers_by_archetype(ARCHETYPES, list(reversed(WORKERS))) == first
    assert len(set(first.values())) > 1


def test_when_a_worker_dies_only_its_archetypes_move():
    before = workers_by_archetype(ARCHETYPES, WORKERS)
    dead = before["vampire"]

    after = workers_by_archetype(ARCHETYPES, [url for url in WORKERS if url != dead])

    for slug in ARCHETYPES:
        if before[slug] == dead:
            assert after[slug] != dead
        else:
            assert after[slug] == before[slug]


def test_no_healthy_worker_raises():
    with pytest.raises(NoHealthyWorker):
        worker_for_archetype("vampire", [])


@pytest.mark.django_db
def test_most_specific_active_adapter_wins():
    subfaction = SubfactionFactory()
    npc = NPCFactory(archetype=subfaction.archetype, subfaction=subfaction)
    active = {"status": AdapterStatus.ACTIVE, "artifact_path": "/a", "sha256": "b" * 64}
    archetype_level = AdapterFactory(archetype=npc.archetype, **active)
    subfaction_level = AdapterFactory(
        scope=AdapterScope.SUBFACTION,
        archetype=None,
        subfaction=subfaction,
        base_model=archetype_level.base_model,
        **active,
    )
    npc_level = AdapterFactory(
        scope=AdapterScope.NPC, archetype=None, npc=npc, base_model=archetype_level.base_model, **active
    )
    ids = {"npc_id": npc.pk, "subfaction_id": subfaction.pk, "archetype_id": npc.archetype_id}

    assert adapter_route_pick(active=[archetype_level, subfaction_level, npc_level], **ids) == npc_level
    assert adapter_route_pick(active=[archetype_level, subfaction_level], **ids) == subfaction_level
    assert adapter_route_pick(active=[archetype_level], **ids) == archetype_level
    assert adapter_route_pick(active=[], **ids) is None
