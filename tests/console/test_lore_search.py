"""Lore search: the selector (HNSW, gating), the designers' page and the JSON API."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client

from console.lore.files import lore_file_read
from console.lore.ingest import lore_document_ingest
from console.lore.search import lore_search
from console.permissions import DESIGNERS
from tests.factories import ArchetypeFactory, UserFactory, WorldFactory

pytestmark = pytest.mark.django_db

DEMO_LORE = Path(settings.DEMO_DIR) / "lore"
SECRET_QUESTION = "Who was Lady Seraphine Valerian and what did she do at the Red Vintage feast?"


@pytest.fixture
def world():
    world = WorldFactory(slug="ravenmoor-test")
    ArchetypeFactory(world=world, slug="vampire")
    ArchetypeFactory(world=world, slug="zombie")
    for name in ("01-gazetteer-of-ravenmoor.md", "03-the-red-testament.md"):
        path = DEMO_LORE / name
        lore_document_ingest(world=world, lore=lore_file_read(path.name, path.read_bytes()))
    lore_document_ingest(
        world=world, lore=lore_file_read("x.md", b"# <b>Bold</b>\n\nA <script>x</script> tag.")
    )
    return world


def test_search_ranks_by_meaning_and_gates_by_archetype(world):
    everything = lore_search(world=world, query=SECRET_QUESTION)
    vampire = lore_search(world=world, query=SECRET_QUESTION, archetype="vampire")
    zombie = lore_search(world=world, query=SECRET_QUESTION, archetype="zombie", limit=50)

    assert everything[0].document == "The Red Testament"
    assert everything[0].score > everything[-1].score
    assert vampire[0].document == "The Red Testament"
    assert vampire[0].conditions == {"archetypes": ["vampire"]}
    assert zombie  # the filtered scan still fills the page
    assert all(hit.document != "The Red Testament" for hit in zombie)


def _designer() -> Client:
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=DESIGNERS))
    client = Client()
    client.force_login(user)
    return client


def test_the_page_shows_ranked_passages_escaped(world):
    response = _designer().get("/lore/search/", {"q": "a tag", "world": world.slug, "limit": 50})

    body = response.content.decode()
    assert response.status_code == 200
    assert "&lt;script&gt;x&lt;/script&gt;" in body
    assert "<script>x</script>" not in body
    assert "archetypes: vampire" in body
    assert "Lore search" in body


def test_the_api_answers_json_and_says_what_is_wrong(world):
    client = _designer()

    ok = client.get("/api/lore/search", {"q": SECRET_QUESTION, "world": world.slug, "archetype": "zombie"})
    bad = client.get("/api/lore/search", {"world": "atlantis", "limit": 500})

    assert ok.status_code == 200
    hits = ok.json()["hits"]
    assert hits
    assert set(hits[0]) == {"chunk", "document", "heading", "text", "score", "conditions"}
    assert all(hit["document"] != "The Red Testament" for hit in hits)
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"q", "world", "limit"}


def test_search_needs_a_staff_user_with_the_lore_permission(world):
    anonymous = Client().get("/api/lore/search", {"q": "x", "world": world.slug})
    staff = Client()
    staff.force_login(UserFactory(is_staff=True))

    assert anonymous.status_code == 302  # to the login page
    assert staff.get("/api/lore/search", {"q": "x", "world": world.slug}).status_code == 403
    assert staff.get("/lore/search/").status_code == 403
