"""Celery tasks of the memory package."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

from celery import shared_task

from console.lore.packs import lore_pack_build, lore_pack_store
from console.redis_clients import redis_sync
from inference.context import turn_context_build
from inference.workers import workers_probe_now
from memory.compaction import CompactionReport, memory_compact
from memory.consolidation import pair_consolidate
from memory.services import memory_rehydrate

logger = logging.getLogger(__name__)

_REHYDRATE_LOCK_S = 120
_CONSOLIDATE_LOCK_S = 300
# Renewed after every batch (MEMORY_COMPACT_BATCH sessions, minutes with the model): a run
# that died leaves the lock for an hour at most.
_COMPACT_LOCK_S = 3600


@shared_task(acks_late=True, ignore_result=True)
def memory_rehydrate_task(npc: str, player: str) -> int:
    """Rebuild a pair's warm tier from the archive (idempotent; one at a time per pair)."""
    client = redis_sync()
    lock = client.lock(f"memory:lock:rehydrate:{npc}:{player}", timeout=_REHYDRATE_LOCK_S, blocking=False)
    if not lock.acquire():
        return 0  # another worker is rebuilding this pair right now
    try:
        restored = memory_rehydrate(redis=client, npc=npc, player=player)
    finally:
        lock.release()
    logger.info("memory: %s/%s rehydrated from the archive, %d turns", npc, player, restored)
    return restored


# ignore_result: with CELERY_RESULT_EXTENDED a stored result keeps the task's arguments, the
# player id among them, past a forget of that player (pair_consolidate logs the outcome).
@shared_task(bind=True, acks_late=True, max_retries=60, ignore_result=True)
def memory_consolidate_task(self: Any, npc: str, player: str) -> dict[str, object]:
    """Summary, facts and relationship card from a pair's new turns (idempotent: a run sees
    only the turns after the previous one; one run at a time per pair)."""
    client = redis_sync()
    lock = client.lock(f"memory:lock:consolidate:{npc}:{player}", timeout=_CONSOLIDATE_LOCK_S, blocking=False)
    if not lock.acquire():
        # A run is in progress; it read the turns when it started, so turns recorded since
        # would be missed: run again after it (seen with `make run`: a gift made while the
        # previous turn was being summarised).
        raise self.retry(countdown=10)
    try:
        context = turn_context_build(npc_slug=npc)
        workers = workers_probe_now()
        report = asyncio.run(
            pair_consolidate(
                redis=client,
                npc=npc,
                npc_name=context.npc_name,
                archetype=context.archetype_slug,
                persona=context.persona,
                player=player,
                workers=workers,
            )
        )
    finally:
        lock.release()
    return {
        "turns": report.turns,
        "facts": report.facts,
        "gifts": report.gifts,
        "summary_by": report.summary_by,
    }


@shared_task(acks_late=True)
def memory_compact_task() -> dict[str, int]:
    """Weekly (CELERY_BEAT_SCHEDULE): a summary for every archived session older than the warm
    window (memory.compaction; idempotent, one run at a time)."""
    client = redis_sync()
    lock = client.lock("memory:lock:compact", timeout=_COMPACT_LOCK_S, blocking=False)
    if not lock.acquire():
        logger.info("memory compaction: another run is in progress")
        return asdict(CompactionReport())
    try:
        report = memory_compact(workers=workers_probe_now(), on_progress=lambda done, total: lock.reacquire())
    finally:
        lock.release()
    return asdict(report)


@shared_task(acks_late=True, ignore_result=True)
def lore_pack_task(npc: str) -> int:
    """Build an NPC's lore pack into Redis (idempotent; one build at a time per NPC)."""
    client = redis_sync()
    lock = client.lock(f"lore:lock:pack:{npc}", timeout=120, blocking=False)
    if not lock.acquire():
        return 0
    try:
        pack = lore_pack_build(npc)
        lore_pack_store(client, pack)
    finally:
        lock.release()
    logger.info("lore: pack of %s built, %d chunks", npc, len(pack))
    return len(pack)
