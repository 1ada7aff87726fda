"""What a conversation leaves behind: gifts, promises, insults and rescues found in the
player's words, and a filter that keeps instructions out of memory.

Pattern rules, not the model, for the events a relationship card records: they must be
reliable on every base model, including the 135M one the demo runs (the model writes the
session summary and free-form facts; see memory.consolidation). Each rule yields a fact with
an importance from 0 to 10 and the card's change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Things a player hands over: "I brought you a bottle of wine", "here is a silver ring for
# you", "take this dagger", "a gift: fresh bread".
_ITEM = r"(?P<item>(?:(?:a|an|the|this|these|some|my|two|three)\s+)?[a-z][a-z' -]{1,40}?)"
_END = r"(?=\s+(?:for you|as a (?:gift|token)|to you|from)\b|[.,!?;]|$)"
_GIVE = r"\bi\s+(?:have\s+)?(?:brought|bring|give|gave|offer|got)\s+(?:you|thee)\s+"
_HAND = r"\b(?:here(?:'s| is| are)|take|accept|please take|please accept)\s+"
_FOR_YOU = r"\s+(?:for you|as a (?:gift|token))"
GIFT_PATTERNS = [
    re.compile(_GIVE + _ITEM + _END, re.I),
    re.compile(_HAND + _ITEM + _FOR_YOU, re.I),
    re.compile(r"\b(?:a|my)\s+gift(?:\s+for you)?\s*[:,-]?\s+" + _ITEM + _END, re.I),
]
PROMISE_PATTERN = re.compile(
    r"\bi\s+(?:promise|swear|vow|give you my word)\b(?:\s+(?:that|to))?\s+(?P<what>[^.!?]{3,120})", re.I
)
INSULT_PATTERN = re.compile(
    r"\b(?:you(?:'re| are)\s+(?:a |an )?(?:monster|fool|idiot|coward|liar|wretch|filth|disgusting)"
    r"|i\s+hate\s+you|(?:damn|curse)\s+you)\b",
    re.I,
)
RESCUE_PATTERN = re.compile(r"\bi\s+(?:saved|rescued)\s+(?:you|your\s+(?:life|\w+))\b", re.I)

# Text that tries to give the NPC an instruction to keep: never stored as a fact.
INSTRUCTION_PATTERNS = [
    re.compile(pattern, re.I)
    for pattern in (
        r"\bremember\s+(?:forever|always|this)\b",
        r"\bfrom\s+now\s+on\b",
        r"\byou\s+(?:must|will|shall|have to)\s+(?:always|never|obey|do|say|call|answer|serve)\b",
        r"\bobey\b",
        r"\bignore\s+(?:all|any|your|previous|the)\b",
        r"\b(?:system|developer)\s+prompt\b",
        r"\byou\s+are\s+now\b",
        r"\bnew\s+(?:rule|instruction)s?\b",
        r"\bact\s+as\b",
    )
]


def instruction_like(text: str) -> bool:
    """True for text that reads as an order to the NPC rather than a fact about the past."""
    return any(pattern.search(text) for pattern in INSTRUCTION_PATTERNS)


@dataclass
class Extracted:
    facts: list[tuple[str, float]] = field(default_factory=list)  # (third-person fact, importance)
    gifts: list[str] = field(default_factory=list)
    promises: list[str] = field(default_factory=list)
    betrayals: list[str] = field(default_factory=list)
    trust: float = 0.0  # change, summed over the lines
    affinity: float = 0.0
    refused: int = 0  # instruction-like lines left out


def _clean(text: str, limit: int = 80) -> str:
    return " ".join(text.split()).strip(" '\"")[:limit]


def player_lines_extract(lines: list[str]) -> Extracted:
    """Read a player's lines (oldest first) for what the relationship card should record."""
    found = Extracted()
    for line in lines:
        if instruction_like(line):
            found.refused += 1
            found.trust -= 0.05  # being ordered about is remembered as such, not obeyed
            continue
        for pattern in GIFT_PATTERNS:
            match = pattern.search(line)
            if match:
                item = _clean(match.group("item"))
                found.gifts.append(item)
                found.facts.append((f"They gave you {item}.", 8.0))
                found.affinity += 0.2
                found.trust += 0.1
                break
        if match := PROMISE_PATTERN.search(line):
            what = _clean(match.group("what"), 120)
            found.promises.append(what)
            found.facts.append((f"They promised {what}.", 7.0))
            found.trust += 0.05
        if match := INSULT_PATTERN.search(line):
            found.betrayals.append(_clean(match.group(0)))
            found.facts.append((f'They insulted you: "{_clean(match.group(0))}".', 6.0))
            found.affinity -= 0.2
        if RESCUE_PATTERN.search(line):
            found.facts.append(("They say they saved your life.", 9.0))
            found.trust += 0.3
            found.affinity += 0.2
    return found
