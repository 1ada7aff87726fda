"""Lore in prompts: gating, NPC lore packs built from pgvector into Redis, and a turn's ranking
with the real embedding model (no Postgres on the turn's side)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from django.conf import settings
from redis.asyncio import Redis

from console.lore import packs as lore_module
from console.lore.embeddings import embedding_model
from console.lore.files import LoreFileError, lore_file_read
from console.lore.gating import conditions_allow
from console.lore.ingest import lore_document_ingest
from console.lore.packs import TurnLore, lore_for_turn, lore_pack_build, lore_pack_store, lore_packs_forget
from tests.factories import ArchetypeFactory, NPCFactory, RegionFactory, WorldFactory

pytestmark = pytest.mark.django_db

TESTAMENT = Path(settings.DEMO_DIR) / "lore" / "03-the-red-testament.md"
MOOR = b"""# The Moor

The Weeping Well in the Market Square of Hollowmere is a spring-fed trough that has never run dry.
"""
QUEST_LORE = b"""---
quests: [blood-debt=paid]
---
# The Debt

Whoever pays the blood debt learns that the Count keeps his coffin beneath the library tower.
"""


@pytest.mark.parametrize(
    ("conditions", "allowed"),
    [
        ({}, True),
        ({"archetypes": ["vampire"]}, True),
        ({"archetypes": ["zombie", "ghoul"]}, False),
        ({"archetypes": ["vampire"], "subfactions": ["house-valerian"]}, False),
        ({"quests": ["blood-debt"]}, True),
        ({"quests": ["blood-debt=paid"]}, False),
        ({"quests": ["lost-ring", "blood-debt=accepted"]}, True),
    ],
)
def test_gating_conditions(conditions, allowed):
    assert (
        conditions_allow(conditions, archetype="vampire", subfaction=None, quests={"blood-debt": "accepted"})
        is allowed
    )


def test_front_matter_gates_a_whole_document_and_bad_front_matter_is_refused():
    secret = lore_file_read(TESTAMENT.name, TESTAMENT.read_bytes())

    assert secret.conditions == {"archetypes": ["vampire"]}
    assert secret.title == "The Red Testament"
    assert not secret.body.startswith("---")
    with pytest.raises(LoreFileError, match="may only hold archetypes, subfactions, quests"):
        lore_file_read("bad.md", b"---\nvisible: everyone\n---\n# Text\n\nBody.")
    with pytest.raises(LoreFileError, match="never closed"):
        lore_file_read("open.md", b"---\narchetypes: [vampire]\n# Text")


@pytest.fixture
def world_with_lore(redis_client):
    lore_packs_forget()
    world = WorldFactory()
    region = RegionFactory(world=world, name="Hollowmere")
    npcs = {
        slug: NPCFactory(archetype=ArchetypeFactory(world=world, slug=slug, name=slug.title()), region=region)
        for slug in ("vampire", "zombie")
    }
    for name, data in (("moor.md", MOOR), (TESTAMENT.name, TESTAMENT.read_bytes()), ("debt.md", QUEST_LORE)):
        lore_document_ingest(world=world, lore=lore_file_read(name, data))
    embedding_model()
    lore_module._model_ready.set()  # loaded above, in this thread
    yield npcs
    lore_packs_forget()


def _turn(npc, text: str, quests: dict[str, str] | None = None) -> TurnLore:
    async def scenario() -> TurnLore:
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            return await lore_for_turn(
                redis, npc=npc.slug, archetype=npc.archetype.slug, subfaction=None, player_text=text,
                quests=quests or {},
            )  # fmt: skip
        finally:
            await redis.aclose()

    return asyncio.run(scenario())


def _store(npc, redis_client) -> int:
    pack = lore_pack_build(npc.slug)
    lore_pack_store(redis_client, pack)
    return len(pack)


def test_a_turn_without_a_pack_asks_for_one_and_goes_on_without_lore(world_with_lore):
    lore = _turn(world_with_lore["vampire"], "Tell me of the Weeping Well.")

    assert (lore.state, lore.slot, lore.used) == ("no_pack", "", [])


def test_only_a_vampire_gets_the_sealed_history_in_its_prompt(world_with_lore, redis_client):
    vampire, zombie = world_with_lore["vampire"], world_with_lore["zombie"]
    question = "Who was Lady Seraphine Valerian and what did she do at the Red Vintage feast?"

    vampire_chunks, zombie_chunks = _store(vampire, redis_client), _store(zombie, redis_client)
    told, untold = _turn(vampire, question), _turn(zombie, question)

    assert vampire_chunks > zombie_chunks > 0
    assert told.state == "used"
    assert "Seraphine" in told.slot
    assert told.used[0]["score"] >= settings.LORE_MIN_SCORE
    assert "Seraphine" not in untold.slot
    assert "Testament" not in untold.slot


def test_the_best_chunk_for_the_players_words_fills_the_slot(world_with_lore, redis_client):
    zombie = world_with_lore["zombie"]
    _store(zombie, redis_client)

    lore = _turn(zombie, "Does the Weeping Well ever run dry?")

    assert lore.slot.startswith("- The Moor: The Weeping Well")
    assert len(lore.used) <= settings.LORE_TOP_K
    assert [entry["score"] for entry in lore.used] == sorted(
        (entry["score"] for entry in lore.used), reverse=True
    )


def test_quest_gated_lore_needs_the_players_quest_stage(world_with_lore, redis_client):
    vampire = world_with_lore["vampire"]
    _store(vampire, redis_client)
    question = "Where does the Count keep his coffin?"

    before = _turn(vampire, question, {"blood-debt": "accepted"})
    after = _turn(vampire, question, {"blood-debt": "paid"})

    assert "coffin beneath the library tower" not in before.slot
    assert "coffin beneath the library tower" in after.slot
