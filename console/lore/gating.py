"""Lore gating: a chunk's `conditions` ({"archetypes": [...], "subfactions": [...],
"quests": [...]}) say who may know it; every key given must match (any value of it). A quest
entry is a quest name (the player's quest card has it) or `name=stage`. No conditions: the
whole world. Concepts (console.lore.graph) carry conditions too, and a chunk naming a gated
concept follows them."""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from console.models import Concept

CONDITION_KEYS = ("archetypes", "subfactions", "quests")


def _allowed_q(archetype: str, subfaction: str | None) -> Q:
    """Rows whose `conditions` let an NPC of `archetype`/`subfaction` know them."""
    allowed = ~Q(conditions__has_key="archetypes") | Q(conditions__archetypes__contains=[archetype])
    allowed &= ~Q(conditions__has_key="subfactions") | (
        Q(conditions__subfactions__contains=[subfaction]) if subfaction else Q(pk__in=[])
    )
    return allowed


def gate_q(*, archetype: str | None, subfaction: str | None = None) -> Q:
    """The chunks an NPC of `archetype` and `subfaction` may know, as a query filter: the
    chunk's own conditions and those of every concept it mentions (a designer gates "the Red
    Testament" once, and every passage naming it follows). Quest conditions are checked per
    turn, against the player's quest card. No archetype: no filter (a designer searching)."""
    if archetype is None:
        return Q()
    blocked = Concept.objects.exclude(conditions={}).exclude(_allowed_q(archetype, subfaction))
    return _allowed_q(archetype, subfaction) & ~Q(concepts__in=blocked.values("pk"))


def conditions_merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Conditions that hold only where both do. Where both name a key, only the values in both
    remain; none left means nobody ("-" is no slug). For quests that is stricter than "one of
    each list" would be: a secret errs on the side of staying secret."""
    merged = {key: list(values) for key, values in first.items()}
    for key, values in second.items():
        if not values:
            continue
        if merged.get(key):
            merged[key] = [value for value in merged[key] if value in values] or ["-"]
        else:
            merged[key] = list(values)
    return merged


def conditions_allow(
    conditions: dict[str, Any], *, archetype: str, subfaction: str | None, quests: dict[str, str]
) -> bool:
    """Whether an NPC of `archetype`/`subfaction` may use lore with `conditions` with a player
    whose quest card is `quests`."""
    if conditions.get("archetypes") and archetype not in conditions["archetypes"]:
        return False
    if conditions.get("subfactions") and subfaction not in conditions["subfactions"]:
        return False
    if conditions.get("quests"):
        return any(_quest_met(entry, quests) for entry in conditions["quests"])
    return True


def _quest_met(entry: str, quests: dict[str, str]) -> bool:
    name, _, stage = entry.partition("=")
    return name in quests and (not stage or quests[name] == stage)
