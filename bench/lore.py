"""Lore benchmark: one JSON line of figures.

- hnsw: recall@10 of the HNSW index (cosine, m=16, ef_construction=64, pgvector's default
  ef_search 40) against exact search, and p50/p95 query time, at `--chunks` chunks (100,000 by
  default) in one world, plus the same with a gating filter (half the chunks vampire-only,
  an iterative scan keeps the filtered query full).
  The chunks' text is generated from templates; embedding 100,000 passages on 2 CPU cores
  would take half an hour, so `--base` passages are embedded for real and every chunk's
  vector is a random mix of three of them plus noise (normalised): the clustered, uneven
  shape real lore has, which uniform random vectors would not have.
- ingest: chunks/s of `manage.py ingest` on the demo lore (10 documents), model load
  excluded, embedding included.
- pack: a turn's lore ranking, p50/p95 ms: embedding the player's words, and ranking a
  full pack (LORE_PACK_MAX chunks) by dot product.

Run: `.venv/bin/python -m bench.lore [--chunks 100000] [--queries 200]` (its own database).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

import numpy as np

from bench.stack import django_setup, figures_print, percentile

SUBJECTS = [
    "the Count", "the ghoul market", "the Greymane Pack", "the marsh plague", "Saint Aldric",
    "the Spire of Morrath", "the Weeping Well", "the Sallow Fen", "the Lantern Wardens", "Crowford",
]  # fmt: skip
VERBS = ["was founded in", "burned in", "was betrayed in", "flooded in", "was sealed in", "returned in"]
DETAILS = [
    "by the light of a red moon", "while the town slept", "as the bells rang", "under a vow of silence",
    "after a hard winter", "with blood on the stones",
]  # fmt: skip


def _generated(count: int, rng: random.Random) -> list[str]:
    return [
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.randint(900, 1190)} "
        f"{rng.choice(DETAILS)}, and {rng.choice(SUBJECTS)} remembers it."
        for _ in range(count)
    ]


def _vectors(base: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, len(base), size=(count, 3))
    weights = rng.dirichlet([1.0, 1.0, 1.0], size=count)[:, :, None]
    mixed = (base[picks] * weights).sum(axis=1) + rng.normal(0, 0.02, size=(count, base.shape[1]))
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)


def _fill(world: Any, vectors: np.ndarray, texts: list[str]) -> None:
    from django.db import connection

    from console.models import LoreChunk, LoreDocument, LoreDocumentVersion

    document = LoreDocument.objects.create(world=world, slug="generated", title="Generated", source="bench")
    version = LoreDocumentVersion.objects.create(document=document, number=1, checksum="-", text="-")
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS lore_chunk_embedding_hnsw")  # built once, after the rows
    batch = 5000
    for start in range(0, len(vectors), batch):
        LoreChunk.objects.bulk_create(
            LoreChunk(
                world=world,
                document=document,
                version=version,
                ordinal=index,
                text=texts[index % len(texts)],
                tokens=20,
                embedding=vectors[index],
                conditions={"archetypes": ["vampire"]} if index % 2 else {},
            )  # fmt: skip
            for index in range(start, min(start + batch, len(vectors)))
        )
        print(f"  {min(start + batch, len(vectors)) * 100 // len(vectors)}% rows", file=sys.stderr)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE INDEX lore_chunk_embedding_hnsw ON console_lorechunk "
            "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
    print(f"  HNSW index built in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _search(world_id: int, query: np.ndarray, *, exact: bool, gated: bool) -> tuple[list[int], float]:
    from django.db import connection, transaction

    where = "world_id = %s" + (" AND NOT (conditions ? 'archetypes')" if gated else "")
    with transaction.atomic(), connection.cursor() as cursor:
        if exact:
            cursor.execute("SET LOCAL enable_indexscan = off")
        else:
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        started = time.perf_counter()
        cursor.execute(
            f"SELECT id FROM console_lorechunk WHERE {where} ORDER BY embedding <=> %s::vector LIMIT 10",  # noqa: S608 - fixed SQL text
            [world_id, "[" + ",".join(f"{x:.6f}" for x in query) + "]"],
        )
        rows = [row[0] for row in cursor.fetchall()]
        return rows, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--base", type=int, default=2000, help="generated passages embedded for real")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    django_setup()
    from django.conf import settings
    from django.core.management import call_command

    from console.lore.embeddings import embed, embedding_model
    from console.lore.packs import LorePack, lore_rank
    from console.models import IngestJob, LoreChunk, World

    call_command("migrate", interactive=False, verbosity=0)
    rng, nprng = random.Random(7), np.random.default_rng(7)
    embedding_model()
    World.objects.filter(slug__in=["bench-lore", "bench-ingest"]).delete()

    # Ingestion throughput on the demo lore.
    ingest_world = World.objects.create(slug="bench-ingest", name="Bench ingest")
    started = time.perf_counter()
    call_command(
        "ingest", str(settings.DEMO_DIR / "lore"), world="bench-ingest", verbosity=0, stdout=sys.stderr
    )
    ingest_s = time.perf_counter() - started
    ingested = IngestJob.objects.get(world=ingest_world).chunks_written

    print(f"embedding {args.base} generated passages…", file=sys.stderr)
    texts = _generated(args.base, rng)
    base = embed(texts, batch_size=64)
    print(f"writing {args.chunks} chunks…", file=sys.stderr)
    world = World.objects.create(slug="bench-lore", name="Bench lore")
    vectors = _vectors(base, args.chunks, nprng)
    _fill(world, vectors, texts)
    assert LoreChunk.objects.filter(world=world).count() == args.chunks

    queries = _vectors(base, args.queries, nprng)
    figures: dict[str, object] = {"bench": "lore", "chunks": args.chunks}
    for gated in (False, True):
        recalls, times = [], []
        for query in queries:
            truth, _ = _search(world.pk, query, exact=True, gated=gated)
            found, elapsed = _search(world.pk, query, exact=False, gated=gated)
            recalls.append(len(set(truth) & set(found)) / max(len(truth), 1))
            times.append(elapsed)
        figures["hnsw_filtered" if gated else "hnsw"] = {
            "recall_at_10": round(float(np.mean(recalls)), 4),
            "p50_ms": round(percentile(times, 50), 2),
            "p95_ms": round(percentile(times, 95), 2),
        }

    pack_size = settings.LORE_PACK_MAX
    pack = LorePack(npc="bench", ids=list(range(pack_size)), texts=["x"] * pack_size,
                    conditions=[{}] * pack_size, matrix=vectors[:pack_size])  # fmt: skip
    embed_times, rank_times = [], []
    for text in _generated(args.queries, rng):
        started = time.perf_counter()
        query = embed([text])[0]
        embed_times.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        lore_rank(pack, query, archetype="vampire", subfaction=None, quests={})
        rank_times.append((time.perf_counter() - started) * 1000)
    figures["pack"] = {
        "chunks": pack_size,
        "embed_p50_ms": round(percentile(embed_times, 50), 2),
        "embed_p95_ms": round(percentile(embed_times, 95), 2),
        "rank_p50_ms": round(percentile(rank_times, 50), 3),
        "rank_p95_ms": round(percentile(rank_times, 95), 3),
    }
    figures["ingest"] = {
        "chunks": ingested,
        "seconds": round(ingest_s, 1),
        "chunks_s": round(ingested / ingest_s, 1),
    }
    World.objects.filter(slug__in=["bench-lore", "bench-ingest"]).delete()
    figures_print(figures)


if __name__ == "__main__":
    main()
