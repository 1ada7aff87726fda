"""Reads for console pages (writes live in console/services)."""

from __future__ import annotations

from django.db.models import QuerySet

from console.models import NPC
from console.models.npcs import NPCStatus


def playtest_npcs() -> QuerySet[NPC]:
    """NPCs a designer can talk to on the playtest page: every active one, with what the picker shows."""
    return (
        NPC.objects.filter(status=NPCStatus.ACTIVE)
        .select_related("archetype", "region")
        .only("slug", "name", "archetype__name", "region__name")
        .order_by("name")
    )
