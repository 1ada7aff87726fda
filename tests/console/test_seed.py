"""seed_demo: the demo world is complete, valid, and re-seeding never duplicates or undoes edits."""

from __future__ import annotations

import copy
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from console.lore.files import lore_file_read
from console.models import NPC, Archetype, Region, Subfaction, World
from console.services.demo import DemoFileError, demo_file_load, demo_seed

pytestmark = pytest.mark.django_db

PILOT_NPCS = {"count-valerian": "vampire", "shambler": "zombie"}


def _counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (World, Region, Archetype, Subfaction, NPC)}


def test_demo_world_has_the_five_archetypes_pilots_and_a_horde():
    call_command("seed_demo", stdout=StringIO())

    assert set(Archetype.objects.values_list("slug", flat=True)) >= {
        "vampire",
        "werewolf",
        "zombie",
        "ghoul",
        "lich",
    }
    for slug, archetype in PILOT_NPCS.items():
        assert NPC.objects.get(slug=slug).archetype.slug == archetype
    assert NPC.objects.count() >= 25
    assert NPC.objects.filter(archetype__slug="zombie").count() >= 20
    for seeded in Archetype.objects.all():
        seeded.full_clean()  # every seeded archetype passes the same rules as an admin edit
        assert {"idle", "talk"} <= set(seeded.action_names)


def test_demo_lore_documents_exist_as_files_each_with_a_title():
    lore = sorted((settings.DEMO_DIR / "lore").glob("*.md"))

    assert len(lore) >= 10
    # A title heading first, after the gating front matter where there is one (docs/lore.md).
    assert all(lore_file_read(path.name, path.read_bytes()).body.startswith("# ") for path in lore)


def test_seed_twice_creates_nothing_new():
    demo_seed()
    before = _counts()

    report = demo_seed()

    assert _counts() == before
    assert sum(report.created.values()) == 0


def test_seed_on_a_partly_seeded_database_completes_without_duplicates():
    demo_seed()
    full = _counts()
    NPC.objects.filter(slug__startswith="marsh-shambler").delete()
    Subfaction.objects.filter(archetype__slug="lich").delete()

    demo_seed()

    assert _counts() == full


def test_seed_keeps_designer_edits_unless_reset():
    demo_seed()
    Archetype.objects.filter(slug="vampire").update(persona="Edited by a designer.")

    demo_seed()
    assert Archetype.objects.get(slug="vampire").persona == "Edited by a designer."

    demo_seed(reset=True)
    assert Archetype.objects.get(slug="vampire").persona != "Edited by a designer."


def test_horde_positions_are_deterministic():
    demo_seed()
    first = list(
        NPC.objects.filter(slug__startswith="marsh-shambler").order_by("slug").values_list("position_x")
    )
    NPC.objects.filter(slug__startswith="marsh-shambler").delete()

    demo_seed()

    second = list(
        NPC.objects.filter(slug__startswith="marsh-shambler").order_by("slug").values_list("position_x")
    )
    assert first == second


def test_a_broken_demo_file_names_the_row_and_writes_nothing():
    data = copy.deepcopy(demo_file_load())
    data["archetypes"][0]["personality_traits"] = {"cunning": 7}

    with pytest.raises(DemoFileError, match=r"archetype vampire: .*'cunning' is 7"):
        demo_seed(data=data)

    assert _counts() == {"World": 0, "Region": 0, "Archetype": 0, "Subfaction": 0, "NPC": 0}


def test_unknown_region_reference_is_reported():
    data = copy.deepcopy(demo_file_load())
    data["npcs"][0]["region"] = "atlantis"

    with pytest.raises(DemoFileError, match="unknown 'atlantis'"):
        demo_seed(data=data)
