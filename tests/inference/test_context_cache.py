"""The bridge's per-process cache of NPC turn contexts: Postgres is read once per NPC, then
refreshed in the background, and an outage keeps known NPCs talking."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError

from console.models import NPC
from inference import context as context_module
from inference.context import turn_context_cached, turn_context_forget
from tests.factories import NPCFactory

# Transactional: the cache reads through database_sync_to_async, on another connection.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_cache():
    turn_context_forget()
    yield
    turn_context_forget()


def test_a_stale_context_is_served_at_once_and_refreshed_in_the_background(settings):
    settings.TURN_CONTEXT_TTL_S = 0
    npc = NPCFactory(name="Old Name")

    async def scenario():
        first = await turn_context_cached(npc.slug)
        # database_sync_to_async, not asyncio.to_thread: it closes the thread's connection,
        # which would otherwise stay open and block dropping the test database.
        await database_sync_to_async(NPC.objects.filter(pk=npc.pk).update)(name="New Name")
        stale = await turn_context_cached(npc.slug)  # starts the refresh
        await asyncio.sleep(0.5)
        return first, stale, await turn_context_cached(npc.slug)

    first, stale, fresh = asyncio.run(scenario())

    assert first.npc_name == stale.npc_name == "Old Name"
    assert fresh.npc_name == "New Name"


def test_known_npcs_keep_their_context_while_postgres_is_down(settings, monkeypatch):
    settings.TURN_CONTEXT_TTL_S = 0
    npc = NPCFactory(name="Survivor")

    def postgres_down(**kwargs):
        raise OperationalError("connection refused")

    async def scenario():
        await turn_context_cached(npc.slug)
        monkeypatch.setattr(context_module, "turn_context_build", postgres_down)
        during = [await turn_context_cached(npc.slug) for _ in range(3)]
        await asyncio.sleep(0.2)
        return during, await turn_context_cached(npc.slug)

    during, after = asyncio.run(scenario())

    assert {context.npc_name for context in during} == {"Survivor"}
    assert after.npc_name == "Survivor"


def test_an_unknown_npc_is_still_an_error():
    async def scenario():
        await turn_context_cached("no-such-npc")

    with pytest.raises(NPC.DoesNotExist):
        asyncio.run(scenario())
