"""Turns from the archive that designers approve for training: play feeds the datasets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from console.models import NPC
from memory.models import MemoryEvent, MemoryEventKind
from training.models import TranscriptApproval


def transcripts_approve(*, events: Iterable[MemoryEvent], approved_by: Any = None) -> int:
    """Approve the turn events among `events` for their NPC's archetype; returns how many were
    new. Other event kinds, and turns of NPCs that no longer exist, are skipped."""
    turns = [event for event in events if event.kind == MemoryEventKind.TURN]
    archetypes = dict(
        NPC.objects.filter(slug__in={event.npc_slug for event in turns}).values_list("slug", "archetype_id")
    )
    approvals = [
        TranscriptApproval(event=event, archetype_id=archetypes[event.npc_slug], approved_by=approved_by)
        for event in turns
        if event.npc_slug in archetypes
    ]
    before = TranscriptApproval.objects.filter(event__in=[approval.event for approval in approvals]).count()
    TranscriptApproval.objects.bulk_create(approvals, ignore_conflicts=True)  # approving twice is harmless
    return len(approvals) - before
