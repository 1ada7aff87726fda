"""Which worker and which adapter serve a turn.

Workers: an archetype's adapters live together on one worker (the design's rule that a model
chain stays on one server). Rendezvous hashing picks it: every process computes the same
owner without coordination, and when a worker dies only its archetypes move.

Adapters: the most specific active adapter for the task wins (NPC, then subfaction, then
archetype); none means the base model with the persona prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from console.models import Adapter, AdapterStatus


class NoHealthyWorker(RuntimeError):
    """Every worker is down: the turn falls back to a bark."""


def _weight(archetype_slug: str, worker_url: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{archetype_slug}|{worker_url}".encode(), digest_size=8).digest(), "big"
    )


def worker_for_archetype(archetype_slug: str, healthy_workers: Sequence[str]) -> str:
    """The healthy worker that owns `archetype_slug` (highest rendezvous weight)."""
    if not healthy_workers:
        raise NoHealthyWorker("no inference worker is healthy")
    return max(healthy_workers, key=lambda url: _weight(archetype_slug, url))


def workers_by_archetype(archetype_slugs: Iterable[str], healthy_workers: Sequence[str]) -> dict[str, str]:
    return {slug: worker_for_archetype(slug, healthy_workers) for slug in archetype_slugs}


@dataclass(frozen=True)
class AdapterRoute:
    """What a turn's task runs on: an adapter's served name, or the base model."""

    lora_name: str | None
    adapter_id: int | None
    scope: str  # npc, subfaction, archetype or base


def adapter_route_pick(
    *, active: Iterable[Adapter], npc_id: int, subfaction_id: int | None, archetype_id: int
) -> Adapter | None:
    """The most specific of the given active adapters (all for one task) for this NPC."""
    by_scope: dict[str, Adapter] = {}
    for adapter in active:
        if adapter.status != AdapterStatus.ACTIVE:
            continue
        if adapter.npc_id == npc_id:
            by_scope["npc"] = adapter
        elif subfaction_id is not None and adapter.subfaction_id == subfaction_id:
            by_scope["subfaction"] = adapter
        elif adapter.archetype_id == archetype_id:
            by_scope["archetype"] = adapter
    for scope in ("npc", "subfaction", "archetype"):
        if scope in by_scope:
            return by_scope[scope]
    return None
