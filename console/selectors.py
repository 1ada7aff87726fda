"""Reads for console pages (writes live in console/services)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import QuerySet
from pgvector.django import CosineDistance

from console.models import NPC, LoreChunk, World
from console.models.npcs import NPCStatus

LORE_SEARCH_MAX = 50


def playtest_npcs() -> QuerySet[NPC]:
    """NPCs a designer can talk to on the playtest page: every active one, with what the picker shows."""
    return (
        NPC.objects.filter(status=NPCStatus.ACTIVE)
        .select_related("archetype", "region")
        .only("slug", "name", "archetype__name", "region__name")
        .order_by("name")
    )


@dataclass(frozen=True)
class LoreHit:
    chunk: int
    document: str
    heading: str
    text: str
    score: float  # cosine similarity, 1 is the same meaning
    conditions: dict[str, Any]


def lore_search(*, world: World, query: str, archetype: str | None = None, limit: int = 10) -> list[LoreHit]:
    """The world's chunks nearest `query` in meaning (HNSW), best first; with `archetype`,
    only what that archetype may know (lore gating, memory.lore)."""
    from memory.embeddings import embed
    from memory.lore import gate_q, iterative_scan_on

    vector = embed([query])[0]
    chunks = (
        LoreChunk.objects.filter(gate_q(archetype=archetype), world=world)
        .select_related("document")
        .annotate(distance=CosineDistance("embedding", vector))
        .order_by("distance")
    )
    with transaction.atomic(), connection.cursor() as cursor:
        iterative_scan_on(cursor)
        found = list(chunks[: min(limit, LORE_SEARCH_MAX)])
    return [
        LoreHit(
            chunk.pk,
            chunk.document.title,
            chunk.heading,
            chunk.text,
            round(1 - chunk.distance, 4),
            chunk.conditions,
        )
        for chunk in found
    ]
