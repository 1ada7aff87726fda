"""The designers' lore search (the console's lore search page): the world's chunks nearest a
query in meaning, through pgvector's HNSW index, gated like an NPC's lore when an archetype is
given. A turn does not search Postgres: it ranks its NPC's pack (console.lore.packs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from pgvector.django import CosineDistance

from console.lore.embeddings import embed
from console.lore.gating import gate_q
from console.models import LoreChunk, World

LORE_SEARCH_MAX = 50


def iterative_scan_on(cursor: Any) -> None:
    """pgvector 0.8: a filtered HNSW scan goes on until it has enough rows (inside a transaction)."""
    cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")


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
    only what that archetype may know (console.lore.gating)."""
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
