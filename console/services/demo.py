"""The demo world "Ravenmoor": read from console/demo/ravenmoor.json and written idempotently.

Existing rows are left as they are unless `reset=True`, because designers edit the demo
(make run seeds on every start and must never undo their work). Every row passes
`full_clean()`, so a broken demo file fails with the field and the rule, and the whole
seed is one transaction: nothing is half-written.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction

from console.models import NPC, Archetype, Region, Subfaction, World


class DemoFileError(ValueError):
    """The demo file is missing or malformed; the message says where."""


@dataclass
class SeedReport:
    created: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        kinds = sorted(set(self.created) | set(self.kept) | set(self.updated))
        return "; ".join(
            f"{kind}: {self.created[kind]} created, {self.updated[kind]} updated, {self.kept[kind]} kept"
            for kind in kinds
        )


def demo_file_load(path: Path | None = None) -> dict[str, Any]:
    path = path or Path(settings.DEMO_DIR) / "ravenmoor.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DemoFileError(f"demo file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise DemoFileError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    for key in ("world", "regions", "archetypes", "npcs"):
        if key not in data:
            raise DemoFileError(f"{path}: missing top-level key {key!r}")
    return data


def _upsert(
    model: type[models.Model],
    *,
    lookup: dict[str, Any],
    values: dict[str, Any],
    reset: bool,
    report: SeedReport,
    label: str,
) -> Any:
    instance = model._default_manager.filter(**lookup).first()
    kind = model._meta.verbose_name_plural
    if instance is not None and not reset:
        report.kept[str(kind)] += 1
        return instance
    created = instance is None
    instance = instance or model(**lookup)
    for name, value in values.items():
        setattr(instance, name, value)
    try:
        instance.full_clean()
    except ValidationError as exc:
        raise DemoFileError(
            f"{label}: {exc.message_dict if hasattr(exc, 'error_dict') else exc.messages}"
        ) from exc
    instance.save()
    (report.created if created else report.updated)[str(kind)] += 1
    return instance


def _horde_members(horde: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand a horde entry into NPC entries at deterministic positions around its centre."""
    rng = random.Random(horde["slug_prefix"])  # same positions on every seed run
    cx, cy, cz = horde["center"]
    spread = float(horde.get("spread", 10.0))
    return [
        {
            "slug": f"{horde['slug_prefix']}-{index:02d}",
            "name": f"{horde['name_prefix']} {index}",
            "archetype": horde["archetype"],
            "subfaction": horde.get("subfaction"),
            "region": horde["region"],
            "backstory": horde.get("backstory", ""),
            "personality_overrides": {},
            "position": [
                round(cx + rng.uniform(-spread, spread), 2),
                cy,
                round(cz + rng.uniform(-spread, spread), 2),
            ],
            "quest_flags": {},
            "status": "active",
        }
        for index in range(1, int(horde["count"]) + 1)
    ]


@transaction.atomic
def demo_seed(*, data: dict[str, Any] | None = None, reset: bool = False) -> SeedReport:
    """Create the demo world; with `reset`, also overwrite rows with the file's content."""
    data = data if data is not None else demo_file_load()
    report = SeedReport()
    world_data = data["world"]
    world = _upsert(
        World,
        lookup={"slug": world_data["slug"]},
        values={"name": world_data["name"], "description": world_data.get("description", "")},
        reset=reset,
        report=report,
        label=f"world {world_data['slug']}",
    )
    regions = {
        entry["slug"]: _upsert(
            Region,
            lookup={"world": world, "slug": entry["slug"]},
            values={"name": entry["name"], "description": entry.get("description", "")},
            reset=reset,
            report=report,
            label=f"region {entry['slug']}",
        )
        for entry in data["regions"]
    }
    archetypes: dict[str, Archetype] = {}
    subfactions: dict[tuple[str, str], Subfaction] = {}
    for entry in data["archetypes"]:
        archetype = _upsert(
            Archetype,
            lookup={"slug": entry["slug"]},
            values={
                "world": world,
                "name": entry["name"],
                "persona": entry["persona"],
                "speech_style": entry.get("speech_style", ""),
                "personality_traits": entry.get("personality_traits", {}),
                "lexicon": entry.get("lexicon", []),
                "allowed_actions": entry["allowed_actions"],
                "emotions": entry["emotions"],
                "barks": entry["barks"],
                "content_policy": entry.get("content_policy", {"blocked_topics": [], "blocked_terms": []}),
            },
            reset=reset,
            report=report,
            label=f"archetype {entry['slug']}",
        )
        archetypes[entry["slug"]] = archetype
        for sub in entry.get("subfactions", []):
            subfactions[(entry["slug"], sub["slug"])] = _upsert(
                Subfaction,
                lookup={"archetype": archetype, "slug": sub["slug"]},
                values={
                    "name": sub["name"],
                    "persona_overrides": sub.get("persona_overrides", ""),
                    "speech_style_overrides": sub.get("speech_style_overrides", ""),
                    "trait_overrides": sub.get("trait_overrides", {}),
                },
                reset=reset,
                report=report,
                label=f"subfaction {entry['slug']}/{sub['slug']}",
            )
    npc_entries = list(data["npcs"])
    for horde in data.get("hordes", []):
        npc_entries.extend(_horde_members(horde))
    for entry in npc_entries:
        label = f"npc {entry.get('slug')}"
        try:
            archetype = archetypes[entry["archetype"]]
            region = regions[entry["region"]]
            subfaction = (
                subfactions[(entry["archetype"], entry["subfaction"])] if entry.get("subfaction") else None
            )
        except KeyError as exc:
            raise DemoFileError(
                f"{label}: refers to unknown {exc.args[0]!r} (archetype, region or subfaction)"
            ) from exc
        x, y, z = entry.get("position", [0.0, 0.0, 0.0])
        _upsert(
            NPC,
            lookup={"slug": entry["slug"]},
            values={
                "name": entry["name"],
                "archetype": archetype,
                "subfaction": subfaction,
                "region": region,
                "backstory": entry.get("backstory", ""),
                "personality_overrides": entry.get("personality_overrides", {}),
                "position_x": float(x),
                "position_y": float(y),
                "position_z": float(z),
                "quest_flags": entry.get("quest_flags", {}),
                "status": entry.get("status", "active"),
            },
            reset=reset,
            report=report,
            label=label,
        )
    return report
