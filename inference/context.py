"""The turn context: everything a turn needs about an NPC, read once, outside the hot path.

`turn_context_build` reads Postgres; callers build it when a conversation starts (or cache
it) so that the turn itself touches no database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Q

from console.caches import ProcessCache
from console.models import NPC, Adapter, AdapterStatus, AdapterTask
from console.services.adapters import BASE_MODEL_NAME, adapter_lora_name
from inference.base_models import base_model_for
from inference.routing import adapter_route_pick

logger = logging.getLogger(__name__)

# Tasks whose adapters run on the turn's hot path, in parallel (see docs/turn-tasks.md).
HOT_PATH_TASKS = (AdapterTask.DIALOGUE_STYLE, AdapterTask.EMOTIONAL_RESPONSE, AdapterTask.ACTION_POLICY)


@dataclass(frozen=True)
class TurnContext:
    npc_slug: str
    npc_name: str
    archetype_slug: str
    persona: str
    subfaction_text: str
    npc_card: str
    emotions: tuple[str, ...]
    actions: tuple[str, ...]
    barks: dict[str, list[str]]
    blocked_terms: tuple[str, ...]
    # task -> served LoRA name; BASE_MODEL_NAME when the task has no active adapter.
    routes: dict[str, str] = field(default_factory=dict)
    missing_adapters: tuple[str, ...] = ()
    model_path: str = ""
    subfaction_slug: str | None = None  # lore gating
    region_slug: str = ""  # activation tiers and cost are counted per region
    region_token_budget: int = 0  # tokens per hour; past it Gold turns run as Silver (0: none)
    # The archetype's history row when the context was read (its admin history): which version
    # of the persona a turn's trace ran with.
    archetype_version: int | None = None
    # console.models.NPCStatus: a dead or dormant NPC does not answer (bridge: npc_unavailable).
    status: str = "active"


def _traits_line(traits: dict[str, Any]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {float(value):.1f}" for name, value in sorted(traits.items()))


def turn_context_build(*, npc_slug: str) -> TurnContext:
    """Read the NPC, its archetype, subfaction and active adapters (a handful of queries)."""
    npc = NPC.objects.select_related("archetype", "archetype__base_model", "subfaction", "region").get(
        slug=npc_slug
    )
    archetype = npc.archetype
    subfaction = npc.subfaction
    traits = {**archetype.personality_traits, **(subfaction.trait_overrides if subfaction else {})}
    traits.update(npc.personality_overrides)
    subfaction_text = ""
    if subfaction is not None:
        subfaction_text = f"You belong to the {subfaction.name}. {subfaction.persona_overrides}".strip()
        if subfaction.speech_style_overrides:
            subfaction_text += f"\nSpeech: {subfaction.speech_style_overrides}"
    card_lines = [
        f"Your name is {npc.name}. You are in {npc.region.name}.",
        npc.backstory,
        f"How you speak: {archetype.speech_style}" if archetype.speech_style else "",
        f"Words you favour: {', '.join(archetype.lexicon)}" if archetype.lexicon else "",
        f"Your nature: {_traits_line(traits)}" if traits else "",
    ]
    targets = Q(archetype=archetype) | Q(npc=npc)
    if subfaction is not None:
        targets |= Q(subfaction=subfaction)
    active = list(Adapter.objects.filter(targets, status=AdapterStatus.ACTIVE, task__in=HOT_PATH_TASKS))
    routes: dict[str, str] = {}
    missing: list[str] = []
    for task in HOT_PATH_TASKS:
        picked = adapter_route_pick(
            active=[adapter for adapter in active if adapter.task == task],
            npc_id=npc.pk,
            subfaction_id=npc.subfaction_id,
            archetype_id=archetype.pk,
        )
        routes[str(task)] = adapter_lora_name(picked) if picked else BASE_MODEL_NAME
        if picked is None:
            missing.append(str(task))
    base_model = base_model_for(archetype)
    return TurnContext(
        subfaction_slug=subfaction.slug if subfaction else None,
        npc_slug=npc.slug,
        npc_name=npc.name,
        archetype_slug=archetype.slug,
        persona=archetype.persona,
        subfaction_text=subfaction_text,
        npc_card="\n".join(line for line in card_lines if line),
        emotions=tuple(archetype.emotions),
        actions=tuple(archetype.action_names),
        barks={key: list(lines) for key, lines in archetype.barks.items()},
        blocked_terms=tuple(archetype.content_policy.get("blocked_terms", [])),
        routes=routes,
        missing_adapters=tuple(missing),
        model_path=base_model.path if base_model else "",
        region_slug=npc.region.slug,
        status=npc.status,
        region_token_budget=npc.region.token_budget_per_hour,
        archetype_version=archetype.history.values_list("history_id", flat=True)
        .order_by("-history_id")
        .first(),
    )


# npc slug -> context; per process. An entry older than TURN_CONTEXT_TTL_S is still served while
# a background read refreshes it (stale-while-revalidate): a turn waits on Postgres only for an
# NPC this process has never seen, and a Postgres outage leaves known NPCs talking with what was
# last read.
_context_cache: ProcessCache[str, TurnContext] = ProcessCache(
    "inference.context.turn_contexts", ttl_s=lambda: settings.TURN_CONTEXT_TTL_S
)


async def turn_context_cached(npc_slug: str) -> TurnContext:
    """The NPC's turn context, read from Postgres once, then refreshed in the background.

    Raises NPC.DoesNotExist for an unknown slug. Async callers (the bridge) use this; the
    database read runs in Django's sync thread, never on the event loop.
    """
    cached = _context_cache.entry(npc_slug)
    if cached is None:
        context = await database_sync_to_async(turn_context_build)(npc_slug=npc_slug)
        _context_cache.set(npc_slug, context)
        return context
    if cached.stale:
        _context_cache.refresh(npc_slug, lambda: _context_reread(npc_slug))
    return cached.value


async def _context_reread(npc_slug: str) -> None:
    try:
        context = await database_sync_to_async(turn_context_build)(npc_slug=npc_slug)
    except NPC.DoesNotExist:
        _context_cache.pop(npc_slug)  # deleted: the next turn says unknown_npc
    except Exception as exc:  # noqa: BLE001 - Postgres down: keep serving what was read
        logger.warning("turn context of %s not refreshed, serving the last one: %s", npc_slug, exc)
    else:
        _context_cache.set(npc_slug, context)


def turn_context_forget(npc_slug: str | None = None) -> None:
    """Drop one NPC's cached context (or all): the next turn reads it again."""
    if npc_slug is None:
        _context_cache.clear()
    else:
        _context_cache.pop(npc_slug)
