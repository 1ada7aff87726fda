"""Lore in prompts without Postgres on the turn's path.

- Gating (console.lore.gating) decides what an NPC may know, and quest conditions per turn.
- A lore pack per NPC: the chunks its archetype and subfaction may know, nearest the NPC's own
  card first, at most LORE_PACK_MAX. Built by a Celery task (Postgres, pgvector) into Redis
  (`lore:pack:{npc}`: the texts as JSON and the embeddings as one float32 matrix), for
  LORE_PACK_TTL_S; each bridge process keeps decoded packs for a minute.
- A turn embeds the player's words and ranks the pack by a dot product (the embeddings are
  unit length, so it is the cosine); the best LORE_TOP_K above LORE_MIN_SCORE whose quest
  conditions the player meets fill the prompt's lore slot. A turn never waits for a pack or
  for the embedding model: without them it goes on without lore and they get ready for the
  next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from pgvector.django import CosineDistance
from redis.asyncio import Redis

from console.caches import ProcessCache
from console.lore.embeddings import embed, embedding_model
from console.lore.gating import conditions_allow, conditions_merge, gate_q
from console.lore.search import iterative_scan_on
from console.models import NPC, Concept, LoreChunk, World
from console.redis_clients import redis_sync

logger = logging.getLogger(__name__)

Matrix = np.ndarray[Any, np.dtype[np.float32]]
SNIPPET_MAX_CHARS = 600


def pack_key(npc: str) -> str:
    return f"lore:pack:{npc}"


@dataclass
class LorePack:
    npc: str
    ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    matrix: np.ndarray[Any, np.dtype[np.float32]] = field(
        default_factory=lambda: np.zeros((0, 384), np.float32)
    )
    built_at: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)


def lore_pack_build(npc_slug: str) -> LorePack:
    """The NPC's pack from Postgres (a Celery task calls this, never a turn)."""

    npc = NPC.objects.select_related("archetype", "subfaction", "region").get(slug=npc_slug)
    archetype = npc.archetype.slug
    subfaction = npc.subfaction.slug if npc.subfaction else None
    allowed = gate_q(archetype=archetype, subfaction=subfaction)
    about = embed([f"{npc.name}. {npc.region.name}. {npc.archetype.name}. {npc.backstory}"])[0]
    with transaction.atomic(), connection.cursor() as cursor:
        iterative_scan_on(cursor)
        rows = list(
            LoreChunk.objects.filter(allowed, world_id=npc.archetype.world_id)
            .order_by(CosineDistance("embedding", about))
            .values_list("pk", "heading", "text", "conditions", "embedding")[: settings.LORE_PACK_MAX]
        )
    # Quest conditions of the concepts a chunk mentions join the chunk's own (checked per turn).
    concept_quests: dict[int, dict[str, Any]] = {}
    for pk, conditions in Concept.chunks.through.objects.filter(
        lorechunk_id__in=[row[0] for row in rows], concept__conditions__has_key="quests"
    ).values_list("lorechunk_id", "concept__conditions"):
        concept_quests[pk] = conditions_merge(concept_quests.get(pk, {}), {"quests": conditions["quests"]})
    pack = LorePack(npc=npc_slug, built_at=time.time())
    for pk, heading, text, conditions, _ in rows:
        pack.ids.append(pk)
        pack.texts.append(f"{heading}: {text}" if heading else text)
        pack.conditions.append(conditions_merge(conditions or {}, concept_quests.get(pk, {})))
    if rows:
        pack.matrix = np.asarray([row[4] for row in rows], dtype=np.float32)
    return pack


def lore_pack_store(redis: Any, pack: LorePack) -> None:
    """Write a pack to Redis (sync client: the Celery task)."""
    meta = {"ids": pack.ids, "texts": pack.texts, "conditions": pack.conditions, "built_at": pack.built_at}
    with redis.pipeline(transaction=True) as pipe:
        pipe.hset(pack_key(pack.npc), mapping={"meta": json.dumps(meta), "matrix": pack.matrix.tobytes()})
        pipe.expire(pack_key(pack.npc), settings.LORE_PACK_TTL_S)
        pipe.execute()


# Packs read from Redis, kept a minute per process: a turn reads Redis for its NPC's pack at most
# once a minute, and a rebuilt pack reaches every process within that minute.
_packs: ProcessCache[str, LorePack] = ProcessCache("console.lore.packs", ttl_s=60, maxsize=2048)


async def lore_pack_load(redis: Redis, npc: str) -> LorePack | None:
    """The NPC's pack: from this process (a minute old at most) or Redis; None when Redis has
    none (the caller queues a build)."""
    pack = _packs.get(npc)
    if pack is not None:
        return pack
    raw = await redis.hgetall(pack_key(npc))
    if not raw:
        return None
    meta = json.loads(raw[b"meta"])
    data = raw[b"matrix"]
    assert isinstance(data, bytes)  # the client does not decode responses
    matrix = (
        np.frombuffer(data, dtype=np.float32).reshape(len(meta["ids"]), -1)
        if meta["ids"]
        else np.zeros((0, 384), np.float32)
    )
    pack = LorePack(npc, meta["ids"], meta["texts"], meta["conditions"], matrix, meta["built_at"])
    _packs.set(npc, pack)
    return pack


def lore_packs_forget() -> None:
    """Drop this process's packs: the next turns read them from Redis again."""
    _packs.clear()


def lore_rank(
    pack: LorePack, query: Matrix, *, archetype: str, subfaction: str | None,
    quests: dict[str, str],
) -> list[tuple[int, float]]:  # fmt: skip
    """(index in the pack, score), best first: the top LORE_TOP_K allowed above LORE_MIN_SCORE."""
    if not len(pack):
        return []
    scores = pack.matrix @ query
    ranked: list[tuple[int, float]] = []
    for index in np.argsort(-scores):
        score = float(scores[index])
        if score < settings.LORE_MIN_SCORE or len(ranked) == settings.LORE_TOP_K:
            break
        # The pack was gated by archetype and subfaction when built; quests are the player's.
        if conditions_allow(
            pack.conditions[index], archetype=archetype, subfaction=subfaction, quests=quests
        ):
            ranked.append((int(index), score))
    return ranked


def lore_slot(pack: LorePack, ranked: list[tuple[int, float]]) -> str:
    return "\n".join(f"- {pack.texts[index][:SNIPPET_MAX_CHARS]}" for index, _ in ranked)


@dataclass
class TurnLore:
    slot: str = ""
    used: list[dict[str, Any]] = field(default_factory=list)  # the trace: chunk ids and scores
    state: str = "none"  # "used", "none" (nothing relevant), "no_pack", "model_loading"


_model_ready = threading.Event()
_model_loading = threading.Lock()


def _model_load_in_background() -> None:
    """Load the embedding model off the event loop, once (a second or two on CPU)."""
    if _model_ready.is_set() or not _model_loading.acquire(blocking=False):
        return

    def load() -> None:

        try:
            embedding_model()
            _model_ready.set()
        finally:
            _model_loading.release()

    threading.Thread(target=load, name="lore-embeddings", daemon=True).start()


async def lore_for_turn(
    redis: Redis,
    *,
    npc: str,
    archetype: str,
    subfaction: str | None,
    player_text: str,
    quests: dict[str, str],
) -> TurnLore:
    """The prompt's lore slot for this turn (see the module docstring)."""
    pack = await lore_pack_load(redis, npc)
    if pack is None:
        return TurnLore(state="no_pack")
    if not len(pack):
        return TurnLore()
    if not _model_ready.is_set():
        _model_load_in_background()
        return TurnLore(state="model_loading")

    query = (await asyncio.to_thread(embed, [player_text]))[0]
    ranked = lore_rank(pack, query, archetype=archetype, subfaction=subfaction, quests=quests)
    used = [{"chunk": pack.ids[index], "score": round(score, 3)} for index, score in ranked]
    return TurnLore(slot=lore_slot(pack, ranked), used=used, state="used" if used else "none")


def lore_packs_drop(world: World) -> int:
    """Drop the Redis lore packs of a world's NPCs after its lore changed."""
    slugs = list(NPC.objects.filter(archetype__world=world).values_list("slug", flat=True))
    if not slugs:
        return 0
    client = redis_sync()
    try:
        return int(client.delete(*(pack_key(slug) for slug in slugs)))
    finally:
        client.close()
