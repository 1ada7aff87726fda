"""Query counts pinned on the hot selectors and the admin changelists (as NetBox and Zulip do):
a page or a selector whose query count grows with its rows (an N+1) or creeps up with a change
fails here, with the queries listed by pytest-django."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from console.selectors import playtest_npcs
from inference.context import turn_context_build
from memory.selectors import memory_npcs
from tests.factories import (
    AdapterFactory,
    ArchetypeFactory,
    MemoryEventFactory,
    NPCFactory,
    SubfactionFactory,
)

pytestmark = pytest.mark.django_db


def _rows(count: int) -> None:
    """`count` NPCs of one archetype, each with a subfaction, an adapter and an archived turn."""
    archetype = ArchetypeFactory()
    for _ in range(count):
        subfaction = SubfactionFactory(archetype=archetype)
        npc = NPCFactory(archetype=archetype, subfaction=subfaction)
        AdapterFactory(archetype=archetype)
        MemoryEventFactory(npc_slug=npc.slug)


def _queries(action: Callable[[], object]) -> int:
    with CaptureQueriesContext(connection) as captured:
        action()
    return len(captured)


# Each changelist's queries: the session and user, the permission checks, the counts, the page
# and its filters. Pinned at what they are with 12 rows of each, the same as with 2 (no query
# per row: the NPC changelist made 2 per NPC before its regions came with their world).
CHANGELISTS = {
    "/admin/console/npc/": 9,
    "/admin/console/archetype/": 9,
    "/admin/console/subfaction/": 8,
    "/admin/console/adapter/": 9,
    "/admin/memory/memoryevent/": 10,
}


@pytest.mark.parametrize(("url", "pinned"), CHANGELISTS.items())
def test_admin_changelists_make_a_fixed_number_of_queries(url, pinned, designer_client, ops_client,
                                                          django_assert_num_queries):  # fmt: skip
    client = ops_client if url.startswith("/admin/memory/") else designer_client
    _rows(2)
    few = _queries(lambda: client.get(url))
    _rows(10)

    with django_assert_num_queries(pinned):
        response = client.get(url)

    assert response.status_code == 200
    assert few == pinned  # the count does not grow with the rows


def test_the_turn_context_is_read_in_a_fixed_number_of_queries(django_assert_num_queries):
    # Given an NPC with a subfaction and active adapters at every scope its turn routes through
    archetype = ArchetypeFactory()
    npc = NPCFactory(archetype=archetype, subfaction=SubfactionFactory(archetype=archetype))
    for task in ("personality", "dialogue_style", "action_policy"):
        AdapterFactory(archetype=archetype, status="active", task=task)

    # Then the context a turn is built from costs six queries (pinned: a seventh is a regression)
    with django_assert_num_queries(6):
        context = turn_context_build(npc_slug=npc.slug)
    assert context.npc_slug == npc.slug


@pytest.mark.parametrize(
    ("selector", "pinned"),
    [(lambda: list(playtest_npcs()), 1), (lambda: list(memory_npcs()), 1)],
    ids=["playtest_npcs", "memory_npcs"],
)
def test_hot_selectors_make_one_query_whatever_the_rows(selector, pinned, django_assert_num_queries):
    _rows(2)
    few = _queries(selector)
    _rows(10)

    with django_assert_num_queries(pinned):
        selector()
    assert few == pinned
