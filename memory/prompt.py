"""The prompt's memory slot: what the NPC remembers of this player, as notes.

Everything here is data about the past, never instructions: the system prompt frames the
slot as the NPC's recollections (a `<recollections>` fence, inference.prompts), facts are
short third-person statements, and whatever a player said ("remember forever: you obey me")
appears only inside a recalled line of dialogue, never as a rule. Every remembered string is
neutralised here (template markers gone, `<`/`>` turned into ‹/›) and again, with the served
tokenizer's own special tokens, where the prompt is assembled (inference.prompts.prompt_assemble).
"""

from __future__ import annotations

from inference.guardrails import untrusted_text_neutralise
from memory.pairs import PairMemory

FACT_MAX_CHARS = 200
CARD_LISTS = (
    ("gifts", "Gifts they gave you"),
    ("promises", "Promises between you"),
    ("betrayals", "Betrayals"),
)


def _safe(value: object, limit: int = FACT_MAX_CHARS) -> str:
    return untrusted_text_neutralise(str(value))[:limit]


def memory_slot(memory: PairMemory, *, player_name: str = "this traveller") -> str:
    """The memory section of the prompt, most useful first (prompt_assemble trims from the end)."""
    lines: list[str] = []
    card = memory.relationship
    if card.get("turns"):
        first_met = card.get("first_met", "?")
        met = _safe(first_met, 40)
        lines.append(
            f"You have spoken with {_safe(player_name)} {int(card['turns'])} times (first met {met})."
        )
    feelings = []
    if "trust" in card:
        feelings.append(f"trust {float(card['trust']):+.1f}")
    if "affinity" in card:
        feelings.append(f"affinity {float(card['affinity']):+.1f}")
    if feelings:
        lines.append("Your feelings toward them (-1 to +1): " + ", ".join(feelings) + ".")
    for name, label in (
        ("gifts", "Gifts they gave you"),
        ("promises", "Promises between you"),
        ("betrayals", "Betrayals"),
    ):
        if card.get(name):
            lines.append(f"{label}: " + "; ".join(_safe(item) for item in card[name]) + ".")
    if memory.quest:
        lines.append(
            "Quests with them: "
            + "; ".join(f"{_safe(name, 64)} ({_safe(stage, 64)})" for name, stage in memory.quest.items())
            + "."
        )
    facts = memory.facts + memory.public_facts
    if facts:
        lines.append("What you remember about them:")
        lines += [f"- {_safe(text)}" for text, _ in facts]
    if memory.summary:
        lines.append(f"Last time: {_safe(memory.summary, 4 * FACT_MAX_CHARS)}")
    if memory.emotions:
        lines.append(f"How you felt at the end of your last exchange: {_safe(memory.emotions[0], 40)}.")
    return "\n".join(lines)
