"""The lore graph: concepts, events and ties found at ingestion (rules, no model), kept across
re-ingestion with designers' corrections, and concept gating in search and lore packs."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse
from redis import Redis

from console.lore.files import lore_file_read
from console.lore.gating import conditions_merge
from console.lore.graph import concept_kind, concept_names, lore_events, lore_graph_refresh
from console.lore.ingest import ingest_job_run
from console.lore.packs import lore_pack_build, lore_packs_forget, pack_key
from console.lore.search import lore_search
from console.models import Concept, ConceptKind, ConceptRelation, IngestJob, LoreEvent
from tests.factories import ArchetypeFactory, NPCFactory, RegionFactory, WorldFactory

pytestmark = pytest.mark.django_db

CHRONICLE = b"""# A Chronicle of the Marsh

**1012.** Oderic Valerian raises a keep upon the crag called the Raven's Tooth.

**1102.** Saint Wendel's Abbey burns in a single night. Abbot Hieronymus is never found.

## Of the Town

The market town of Hollowmere lies below the Raven's Tooth. Paid Mara Holt two pence for mending
the Weeping Well in Hollowmere. Nothing grows on Cinder Hill, and the Bone Guild keeps to the catacombs.
In the year 1139 Brother Tamsin of the Chapel of Saint Aldric counted the skulls.
"""
RELIC = b"""# The Relic

The Ember Chalice lies in the crypt of Saint Wendel's Abbey, where the Bone Guild cannot reach it.
"""


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("Cinder Hill", ConceptKind.PLACE),
        ("Castle Valerian", ConceptKind.PLACE),
        ("Hollowmere", ConceptKind.PLACE),
        ("Chapel of Saint Aldric", ConceptKind.PLACE),
        ("Abbot Hieronymus", ConceptKind.PERSON),
        ("Aldous Morrath", ConceptKind.PERSON),
        ("Bone Guild", ConceptKind.FACTION),
        ("Ember Chalice", ConceptKind.ITEM),
        ("Blood Tithe Agreement", ConceptKind.OTHER),
    ],
)
def test_a_names_words_say_what_it_is(name, kind):
    assert concept_kind(name) == kind


def test_names_are_found_without_sentence_starts_possessives_or_titles_alone():
    names = concept_names([CHRONICLE.decode(), "The Count's hounds ran. The Lady wept in Hollowmere."])

    assert {"Oderic Valerian", "Raven's Tooth", "Hollowmere", "Mara Holt", "Bone Guild"} <= set(names)
    assert {"Brother Tamsin", "Chapel of Saint Aldric"} <= set(names)  # a titled person "of" a place
    assert "Paid Mara Holt" not in names  # a capital at a sentence's start says nothing
    assert "Nothing" not in names
    assert "Paid" not in names
    assert "Count's" not in names
    assert "Lady" not in names
    assert "Of the Town" not in names
    assert "Town" not in names
    assert names["Hollowmere"] == 3


def test_chronicle_entries_and_dated_sentences_become_events():
    events = lore_events(CHRONICLE.decode())

    assert [(event.year, event.description[:26]) for event in events] == [
        (1012, "Oderic Valerian raises a k"),
        (1102, "Saint Wendel's Abbey burns"),
        (1139, "In the year 1139 Brother T"),
    ]


def _ingest(world, *files: tuple[str, bytes]) -> IngestJob:
    job = IngestJob.objects.create(world=world, source="test")
    return ingest_job_run(job, files=[lore_file_read(name, data) for name, data in files])


def test_ingestion_builds_the_graph_and_reingestion_keeps_designers_corrections():
    world = WorldFactory()
    RegionFactory(world=world, name="Hollowmere")

    job = _ingest(world, ("chronicle.md", CHRONICLE), ("relic.md", RELIC))

    assert "lore graph:" in job.log
    concepts = {concept.name: concept for concept in Concept.objects.filter(world=world)}
    assert concepts["Hollowmere"].kind == ConceptKind.PLACE
    assert concepts["Bone Guild"].chunks.count() == 2  # named in both documents
    assert concepts["Ember Chalice"].chunks.get().document.slug == "relic"
    events = LoreEvent.objects.filter(world=world)
    assert list(events.order_by("year").values_list("year", flat=True)) == [1012, 1102, 1139]
    assert set(events.get(year=1102).concepts.values_list("name", flat=True)) == {
        "Saint Wendel's Abbey",
        "Abbot Hieronymus",
    }
    tie = ConceptRelation.objects.get(source__name="Bone Guild", target__name="Saint Wendel's Abbey")
    assert (tie.kind, tie.weight) == ("mentioned_with", 1)

    # A designer corrects a kind and gates a concept; the relic is then rewritten without it.
    Concept.objects.filter(world=world, name="Mara Holt").update(kind=ConceptKind.OTHER)
    Concept.objects.filter(world=world, name="Bone Guild").update(conditions={"archetypes": ["ghoul"]})
    _ingest(
        world, ("chronicle.md", CHRONICLE), ("relic.md", b"# The Relic\n\nIt was lost in the Sallow Fen.")
    )

    names = set(Concept.objects.filter(world=world).values_list("name", flat=True))
    assert "Ember Chalice" not in names
    assert "Sallow Fen" in names
    assert Concept.objects.get(world=world, name="Mara Holt").kind == ConceptKind.OTHER
    guild = Concept.objects.get(world=world, name="Bone Guild")
    assert guild.conditions == {"archetypes": ["ghoul"]}
    assert guild.chunks.count() == 1
    assert not ConceptRelation.objects.filter(source__name="Ember Chalice").exists()
    assert LoreEvent.objects.filter(world=world).count() == 3  # rebuilt, not doubled


def test_a_refresh_links_hand_made_concepts_and_is_idempotent():
    world = WorldFactory()
    _ingest(world, ("chronicle.md", CHRONICLE))
    Concept.objects.create(world=world, name="market town", kind=ConceptKind.PLACE)  # not a name

    first = lore_graph_refresh(world)
    second = lore_graph_refresh(world)

    assert Concept.objects.get(world=world, name="market town").chunks.count() == 1
    assert (second.concepts, second.created, second.events, second.relations) == (
        first.concepts,
        0,
        first.events,
        first.relations,
    )
    assert ConceptRelation.objects.filter(world=world).count() == first.relations


@pytest.fixture
def gated_guild(redis_client):
    """The Bone Guild is a ghoul secret: every passage naming it is gated through the concept."""
    lore_packs_forget()
    world = WorldFactory()
    region = RegionFactory(world=world, name="Hollowmere")
    npcs = {
        slug: NPCFactory(archetype=ArchetypeFactory(world=world, slug=slug, name=slug.title()), region=region)
        for slug in ("ghoul", "zombie")
    }
    _ingest(world, ("chronicle.md", CHRONICLE), ("relic.md", RELIC))
    Concept.objects.filter(world=world, name="Bone Guild").update(conditions={"archetypes": ["ghoul"]})
    yield world, npcs
    lore_packs_forget()


def test_a_gated_concept_hides_every_passage_naming_it_from_other_archetypes(gated_guild):
    world, npcs = gated_guild
    question = "Where does the Bone Guild keep?"

    for_ghoul = lore_search(world=world, query=question, archetype="ghoul")
    for_zombie = lore_search(world=world, query=question, archetype="zombie")
    zombie_pack = lore_pack_build(npcs["zombie"].slug)
    ghoul_pack = lore_pack_build(npcs["ghoul"].slug)

    assert sum("Bone Guild" in hit.text for hit in for_ghoul) == 2
    assert for_zombie
    assert not any("Bone Guild" in hit.text for hit in for_zombie)
    assert not any("Bone Guild" in text for text in zombie_pack.texts)
    assert sum("Bone Guild" in text for text in ghoul_pack.texts) == 2


def test_a_concepts_quest_condition_joins_its_passages_in_the_pack(gated_guild):
    world, npcs = gated_guild
    Concept.objects.filter(world=world, name="Ember Chalice").update(conditions={"quests": ["relic-hunt"]})

    pack = lore_pack_build(npcs["ghoul"].slug)

    relic = next(index for index, text in enumerate(pack.texts) if "Ember Chalice" in text)
    assert pack.conditions[relic] == {"quests": ["relic-hunt"]}
    assert all(c == {} for index, c in enumerate(pack.conditions) if index != relic)


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        ({}, {}, {}),
        ({"archetypes": ["vampire"]}, {}, {"archetypes": ["vampire"]}),
        ({}, {"quests": ["a"]}, {"quests": ["a"]}),
        ({"archetypes": ["vampire", "lich"]}, {"archetypes": ["lich"]}, {"archetypes": ["lich"]}),
        ({"archetypes": ["vampire"]}, {"archetypes": ["ghoul"]}, {"archetypes": ["-"]}),  # nobody
        ({"quests": ["a", "b"]}, {"quests": ["b=done"]}, {"quests": ["-"]}),
    ],
)
def test_merged_conditions_hold_only_where_both_do(first, second, merged):
    assert conditions_merge(first, second) == merged


def test_designers_see_concepts_and_gating_one_drops_the_worlds_lore_packs(gated_guild, designer_client):
    world, npcs = gated_guild
    redis = Redis.from_url(settings.REDIS_URL)
    redis.hset(pack_key(npcs["zombie"].slug), "meta", "{}")
    guild = Concept.objects.get(world=world, name="Bone Guild")

    listing = designer_client.get(reverse("admin:console_concept_changelist"), {"world__id__exact": world.pk})
    page = designer_client.get(reverse("admin:console_concept_change", args=[guild.pk]))
    response = designer_client.post(
        reverse("admin:console_concept_change", args=[guild.pk]),
        {
            "world": world.pk, "name": guild.name, "kind": guild.kind,
            "conditions": '{"archetypes": ["ghoul", "zombie"]}',
            "relations_out-TOTAL_FORMS": "0", "relations_out-INITIAL_FORMS": "0",
        },
    )  # fmt: skip

    assert listing.status_code == 200
    assert "Bone Guild" in listing.content.decode()
    assert "Saint Wendel&#x27;s Abbey" in page.content.decode()  # its ties, escaped
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Concept.objects.get(pk=guild.pk).conditions == {"archetypes": ["ghoul", "zombie"]}
    assert not redis.exists(pack_key(npcs["zombie"].slug))  # rebuilt with the new gating
    redis.close()
