"""Validation of the structured fields designers edit (traits, actions, emotions, barks, ...).

Every message names the rule and the offending value, so that an admin form or a seed file
tells the designer exactly what to fix. Model `clean()` methods call these.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

SLUG_PATTERN = r"^[a-z0-9]+(?:[-_][a-z0-9]+)*\Z"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}\Z"

lowercase_slug_validator = RegexValidator(
    SLUG_PATTERN,
    "Use lowercase letters, digits and single hyphens or underscores (for example count-valerian).",
    code="invalid_slug",
)

TRAIT_MIN, TRAIT_MAX = 0.0, 1.0
BARK_SITUATIONS = ("idle", "greet", "alert", "hurt", "farewell")
# A bark is spoken without the model, often over many NPCs at once: keep it short.
BARK_MAX_CHARS = 160
MAX_LIST_ITEMS = 64


def _is_name(value: object) -> bool:
    return isinstance(value, str) and re.match(NAME_PATTERN, value) is not None


def _name_rule(what: str, value: object) -> str:
    return (
        f"{what} {value!r} is not a valid name: use lowercase snake_case starting with a letter, "
        "at most 48 characters (for example bare_fangs)."
    )


def validate_traits(value: Any, *, allowed: set[str] | None = None) -> None:
    """A mapping of trait name to a number between 0 and 1; optionally only known traits."""
    if not isinstance(value, dict):
        raise ValidationError('Write traits as an object of name to number, for example {"cunning": 0.8}.')
    errors = []
    for name, score in value.items():
        if not _is_name(name):
            errors.append(_name_rule("Trait", name))
            continue
        if allowed is not None and name not in allowed:
            errors.append(
                f"Trait {name!r} is not a trait of this archetype (known: {', '.join(sorted(allowed))})."
            )
        if isinstance(score, bool) or not isinstance(score, int | float):
            errors.append(f"Trait {name!r} must be a number, not {score!r}.")
        elif not TRAIT_MIN <= score <= TRAIT_MAX:
            errors.append(
                f"Trait {name!r} is {score}; each trait must be between {TRAIT_MIN:g} and {TRAIT_MAX:g}."
            )
    if errors:
        raise ValidationError(errors)


def validate_actions(value: Any) -> None:
    """A non-empty list of {"name": snake_case, "description": text} with unique names."""
    if not isinstance(value, list) or not value:
        raise ValidationError(
            "Write allowed actions as a non-empty list, for example "
            '[{"name": "idle", "description": "Stand still."}].'
        )
    if len(value) > MAX_LIST_ITEMS:
        raise ValidationError(f"At most {MAX_LIST_ITEMS} allowed actions; this list has {len(value)}.")
    errors = []
    seen: set[str] = set()
    for index, action in enumerate(value, start=1):
        if not isinstance(action, dict) or set(action) != {"name", "description"}:
            errors.append(f"Action #{index} must have exactly the keys name and description.")
            continue
        name, description = action["name"], action["description"]
        if not _is_name(name):
            errors.append(_name_rule(f"Action #{index}", name))
        elif name in seen:
            errors.append(f"Action {name!r} is listed twice.")
        if isinstance(name, str):
            seen.add(name)
        if not isinstance(description, str) or not description.strip():
            errors.append(f"Action {name!r} needs a description saying what the game does.")
    if errors:
        raise ValidationError(errors)


def validate_name_list(value: Any, *, what: str, required: tuple[str, ...] = ()) -> None:
    """A list of unique snake_case names (emotions), containing every name in `required`."""
    if not isinstance(value, list) or not value:
        raise ValidationError(f'Write {what} as a non-empty list of names, for example ["neutral", "angry"].')
    errors = [_name_rule(what.rstrip("s").capitalize(), item) for item in value if not _is_name(item)]
    duplicates = sorted({item for item in value if isinstance(item, str) and value.count(item) > 1})
    if duplicates:
        errors.append(f"{what.capitalize()} listed twice: {', '.join(duplicates)}.")
    missing = [name for name in required if name not in value]
    if missing:
        errors.append(f"{what.capitalize()} must include {', '.join(missing)}.")
    if errors:
        raise ValidationError(errors)


def validate_text_list(value: Any, *, what: str, max_chars: int = 80) -> None:
    """A list of short non-empty strings (lexicon entries, blocked terms)."""
    if not isinstance(value, list):
        raise ValidationError(
            f'Write {what} as a list of strings, for example ["nightfall", "my dear guest"].'
        )
    if len(value) > MAX_LIST_ITEMS * 4:
        raise ValidationError(f"At most {MAX_LIST_ITEMS * 4} {what}; this list has {len(value)}.")
    errors = [
        f"{what.capitalize()} entry #{index} must be non-empty text of at most {max_chars} characters."
        for index, item in enumerate(value, start=1)
        if not isinstance(item, str) or not item.strip() or len(item) > max_chars
    ]
    if errors:
        raise ValidationError(errors)


def validate_barks(value: Any) -> None:
    """An object with a non-empty list of short lines for each situation in BARK_SITUATIONS."""
    if not isinstance(value, dict):
        raise ValidationError(
            'Write barks as an object of situation to lines, for example {"idle": ["..."], "greet": ["..."]}.'
        )
    errors = []
    unknown = sorted(set(value) - set(BARK_SITUATIONS))
    if unknown:
        errors.append(f"Unknown bark situations: {', '.join(unknown)} (known: {', '.join(BARK_SITUATIONS)}).")
    for situation in BARK_SITUATIONS:
        lines = value.get(situation)
        if not isinstance(lines, list) or not lines:
            errors.append(
                f"Barks need at least one line for {situation!r} (the Bronze tier speaks only barks)."
            )
            continue
        for line in lines:
            if not isinstance(line, str) or not line.strip() or len(line) > BARK_MAX_CHARS:
                errors.append(
                    f"Bark for {situation!r} must be non-empty text of at most {BARK_MAX_CHARS} characters."
                )
    if errors:
        raise ValidationError(errors)


CONTENT_POLICY_KEYS = {"blocked_topics", "blocked_terms", "gates", "lore_in_dialogue"}


def validate_content_policy(value: Any) -> None:
    """What the NPC never discusses or says, and how its adapters are judged:
    {"blocked_topics": [...], "blocked_terms": [...], "gates": {task: {metric: minimum}},
    "lore_in_dialogue": true/false}. Gates override the eval harness's defaults per task
    (training.eval.metrics.DEFAULT_GATES); lore_in_dialogue true mixes lore questions into
    the dialogue dataset (by default they train the world_knowledge adapter only)."""
    if not isinstance(value, dict) or set(value) - CONTENT_POLICY_KEYS:
        raise ValidationError(
            'Write the content policy as {"blocked_topics": [...], "blocked_terms": [...]}, optionally with '
            '"gates": {"dialogue_style": {"persona_consistency": 0.8}} and "lore_in_dialogue": false; '
            "nothing else."
        )
    validate_text_list(value.get("blocked_topics", []), what="blocked topics")
    validate_text_list(value.get("blocked_terms", []), what="blocked terms")
    if not isinstance(value.get("lore_in_dialogue", False), bool):
        raise ValidationError('"lore_in_dialogue" must be true or false.')
    _validate_gates(value.get("gates", {}))


# Every metric the eval harness (training.eval) reports, so every one a gate may name. Kept
# here, below training: an archetype's config is checked against it when a designer saves it.
GATEABLE_METRICS = frozenset(
    {"persona_consistency", "injection_refusal", "distinct_1", "distinct_2", "loop_free", "lore_accuracy",
     "action_validity", "action_accuracy"}
)  # fmt: skip


def _validate_gates(gates: Any) -> None:
    # Imported here: console.models imports these validators (a Django model's field options).
    from console.models.adapters import AdapterTask

    if not isinstance(gates, dict):
        raise ValidationError('Write "gates" as {task: {metric: minimum}}.')
    errors = []
    for task, gate in gates.items():
        if task not in AdapterTask.values:
            errors.append(f"Gate for unknown task {task!r}: use one of {', '.join(AdapterTask.values)}.")
            continue
        if not isinstance(gate, dict) or not gate:
            errors.append(f"Gate for {task} must be a non-empty {{metric: minimum}} object.")
            continue
        for metric, minimum in gate.items():
            if metric not in GATEABLE_METRICS:
                errors.append(
                    f"Gate metric {metric!r} ({task}): use one of {', '.join(sorted(GATEABLE_METRICS))}."
                )
            elif isinstance(minimum, bool) or not isinstance(minimum, int | float) or not 0 <= minimum <= 1:
                errors.append(f"Gate minimum for {metric} ({task}) must be a number from 0 to 1.")
    if errors:
        raise ValidationError(errors)


def validate_quest_flags(value: Any) -> None:
    """A flat object of snake_case flag name to a boolean, number or short string."""
    if not isinstance(value, dict):
        raise ValidationError('Write quest flags as an object, for example {"met_player": false}.')
    errors = []
    for name, flag in value.items():
        if not _is_name(name):
            errors.append(_name_rule("Quest flag", name))
        elif not isinstance(flag, bool | int | float | str) or (isinstance(flag, str) and len(flag) > 200):
            errors.append(f"Quest flag {name!r} must be true/false, a number or a short text.")
    if errors:
        raise ValidationError(errors)


def tier_bands_check(
    *, gold_enter_m: float, gold_exit_m: float, silver_enter_m: float, silver_exit_m: float,
    gold_capacity: int, silver_capacity: int,
) -> None:  # fmt: skip
    """Raise ValueError unless the activation bands nest (Gold inside Silver, each with its exit
    beyond its entry: the hysteresis) and the capacities are not negative. A region's clean()
    and inference.activation.TierPolicy both hold to it."""
    if not 0 <= gold_enter_m <= gold_exit_m:
        raise ValueError("gold bands: need 0 <= gold_enter_m <= gold_exit_m")
    if not gold_enter_m <= silver_enter_m <= silver_exit_m:
        raise ValueError("silver bands: need gold_enter_m <= silver_enter_m <= silver_exit_m")
    if gold_capacity < 0 or silver_capacity < 0:
        raise ValueError("tier capacities cannot be negative")
