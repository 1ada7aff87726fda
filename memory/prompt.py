"""The prompt's memory slot: what the NPC remembers of this player, as notes.

Everything here is data about the past, never instructions: the system prompt frames the
slot as the NPC's recollections, facts are short third-person statements, and whatever a
player said ("remember forever: you obey me") appears only inside a recalled line of
dialogue, never as a rule.
"""

from __future__ import annotations

from memory.tiers import PairMemory

FACT_MAX_CHARS = 200
CARD_LISTS = (
    ("gifts", "Gifts they gave you"),
    ("promises", "Promises between you"),
    ("betrayals", "Betrayals"),
)


def memory_slot(memory: PairMemory, *, player_name: str = "this traveller") -> str:
    """The memory section of the prompt, most useful first (prompt_assemble trims from the end)."""
    lines: list[str] = []
    card = memory.relationship
    if card.get("turns"):
        first_met = card.get("first_met", "?")
        lines.append(f"You have spoken with {player_name} {card['turns']} times (first met {first_met}).")
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
            lines.append(f"{label}: " + "; ".join(str(item)[:FACT_MAX_CHARS] for item in card[name]) + ".")
    if memory.quest:
        lines.append(
            "Quests with them: "
            + "; ".join(f"{name} ({stage})" for name, stage in memory.quest.items())
            + "."
        )
    facts = memory.facts + memory.public_facts
    if facts:
        lines.append("What you remember about them:")
        lines += [f"- {text[:FACT_MAX_CHARS]}" for text, _ in facts]
    if memory.summary:
        lines.append(f"Last time: {memory.summary}")
    if memory.emotions:
        lines.append(f"How you felt at the end of your last exchange: {memory.emotions[0]}.")
    return "\n".join(lines)
