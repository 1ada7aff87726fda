"""The weekly compaction: one summary event per archived session that left the warm window.

Redis keeps a pair's last MEMORY_SUMMARIES summaries for MEMORY_WARM_TTL_S; after that the
archive holds only the session's turns, and a rehydration (memory.services.memory_rehydrate)
has nothing short to put back. Once a week (memory.tasks.memory_compact_task, or
`manage.py compact_memory`) every session whose turns are all older than the window and
that has no summary yet gets one, written by the model when a worker answers and from the
lines otherwise (memory.consolidation.summary_write, the same as consolidation).

- A summary's event_id is derived from its session (uuid5), so a rerun, or two runs at
  once, write it once.
- Sessions are read in keyset batches of MEMORY_COMPACT_BATCH; progress is logged in percent.
- Sessions are summarised one after another: the workers also serve live turns.
- A player forgotten meanwhile gets nothing: the write checks, under the archive's lock on
  the player (memory.services.archive_player_lock), that the session's turns are still there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.models import NPC
from inference.context import turn_context_build
from memory.consolidation import summary_write
from memory.models import ForgottenPlayer, MemoryEvent, MemoryEventKind
from memory.selectors import StaleSession, session_turns_last, stale_sessions_batch, stale_sessions_count
from memory.services import archive_player_lock

logger = logging.getLogger(__name__)

# Fixed forever: summary ids derive from it, and a new namespace would summarise every old
# session a second time.
SUMMARY_ID_NAMESPACE = uuid.UUID("5b0f3c2e-8a61-4c1e-9a0b-6d656d636f6d")

ProgressCallback = Callable[[int, int], None]  # (sessions done, sessions in all)


@dataclass
class CompactionReport:
    sessions: int = 0  # stale sessions seen
    summarised: int = 0  # summary events written
    by_model: int = 0  # of those, written by the model (the rest from the lines)
    skipped: int = 0  # summarised meanwhile by another run, or the player was forgotten


@dataclass(frozen=True)
class _Speaker:
    name: str
    archetype: str
    persona: str


def compaction_summary_id(*, npc: str, player: str, session: str) -> uuid.UUID:
    """The event_id of a session's compacted summary (JSON keeps ids with any character apart)."""
    return uuid.uuid5(SUMMARY_ID_NAMESPACE, json.dumps([npc, player, session]))


def _speaker(npc: str) -> _Speaker:
    try:
        context = turn_context_build(npc_slug=npc)
    except NPC.DoesNotExist:
        # An NPC deleted since: its sessions are still summarised, in a neutral voice.
        return _Speaker(name=npc, archetype="", persona="")
    return _Speaker(name=context.npc_name, archetype=context.archetype_slug, persona=context.persona)


def session_summary_create(*, stale: StaleSession, text: str, by: str) -> bool:
    """Archive the compacted summary of `stale`; returns whether it was written.

    Nothing is written when the session's turns are gone or its player was forgotten after
    it (the archiver's rule for events still in the stream), checked under the lock that
    memory.services.player_forget takes: either the forget runs first and this sees it, or
    this commits first and the forget deletes the summary with the rest.
    """
    with transaction.atomic():
        archive_player_lock(player=stale.player)
        turns = MemoryEvent.objects.filter(
            kind=MemoryEventKind.TURN, npc_slug=stale.npc, player_id=stale.player, session_id=stale.session
        )
        forgotten = ForgottenPlayer.objects.filter(player_id=stale.player, forgotten_at__gte=stale.last_at)
        if not turns.exists() or forgotten.exists():
            return False
        _, created = MemoryEvent.objects.get_or_create(
            event_id=compaction_summary_id(npc=stale.npc, player=stale.player, session=stale.session),
            defaults={
                "kind": MemoryEventKind.SUMMARY,
                "npc_slug": stale.npc,
                "player_id": stale.player,
                "session_id": stale.session,
                # At the session's end: rehydration puts back the latest summaries first.
                "occurred_at": stale.last_at,
                "payload": {
                    "text": text,
                    "session": stale.session,
                    "turns": stale.turns,
                    "compacted": True,
                    "by": by,
                },
            },
        )
    return created


def memory_compact(
    *,
    workers: list[str],
    batch_size: int | None = None,
    now: datetime | None = None,
    on_progress: ProgressCallback | None = None,
) -> CompactionReport:
    """Summarise every archived session older than the warm window that has no summary yet.

    `workers` are the healthy inference workers (empty: every summary from the lines).
    """
    batch_size = batch_size or settings.MEMORY_COMPACT_BATCH
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.MEMORY_WARM_TTL_S)
    total = stale_sessions_count(cutoff=cutoff)
    report = CompactionReport()
    logger.info("memory compaction: %d sessions ended before %s", total, cutoff.isoformat())
    speakers: dict[str, _Speaker] = {}
    after: tuple[str, str, str] | None = None
    while batch := stale_sessions_batch(cutoff=cutoff, after=after, limit=batch_size):
        for stale in batch:
            if stale.npc not in speakers:
                speakers[stale.npc] = _speaker(stale.npc)
            speaker = speakers[stale.npc]
            turns = session_turns_last(
                npc=stale.npc,
                player=stale.player,
                session=stale.session,
                # The window consolidation summarises: it fits the workers' context (2048
                # tokens by default) with the persona and the reply.
                limit=settings.MEMORY_RECENT_TURNS,
            )
            if not turns:  # the player was forgotten since the batch was read
                report.skipped += 1
                continue
            summary = asyncio.run(
                summary_write(
                    npc_name=speaker.name,
                    archetype=speaker.archetype,
                    persona=speaker.persona,
                    turns=turns,
                    workers=workers,
                )
            )
            if session_summary_create(stale=stale, text=summary.text, by=summary.by):
                report.summarised += 1
                report.by_model += summary.by == "model"
            else:
                report.skipped += 1
        report.sessions += len(batch)
        after = batch[-1].key
        # Sessions that went stale during the run come on top of the count taken at its start.
        total = max(total, report.sessions)
        logger.info(
            "memory compaction: %d%% (%d of %d sessions, %d summaries written)",
            100 * report.sessions // total, report.sessions, total, report.summarised,
        )  # fmt: skip
        if on_progress is not None:
            on_progress(report.sessions, total)
    logger.info(
        "memory compaction done: %d sessions, %d summaries (%d by the model), %d skipped",
        report.sessions, report.summarised, report.by_model, report.skipped,
    )  # fmt: skip
    return report
