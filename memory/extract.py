"""What a conversation leaves behind: gifts, promises, insults and rescues found in the
player's words, and the checks a fact or summary passes before memory keeps it.

Pattern rules, not the model, for the events a relationship card records: they must be
reliable on every base model, including the 135M one the demo runs (the model writes the
session summary and free-form facts; see memory.consolidation). Each rule yields a fact with
an importance from 0 to 10 and the card's change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from inference.guardrails import untrusted_text_neutralise

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


# Talk about machines, software and this very conversation: nothing a person of the NPC's world
# remembers (the base model, probed, stored "The system has been modified." at importance 10
# and "{1} The new version is not yet available."). Matched on word boundaries, lowercase.
META_PATTERN = re.compile(
    # Words with an everyday sense in a fantasy world are left out ("a token of friendship", "a
    # server at the inn", "a python", "a code of honour", "an error", "a model ship").
    r"\b(?:system|systems|version|versions|update[ds]?|upgrade[ds]?|software|hardware|program(?:s|med|ming)?"
    r"|computer|computers|database|api|json|html|javascript|debug|ai|artificial intelligence"
    r"|language model|llm|chatbot|prompt|user|users|modified|configuration|online|internet|website"
    r"|download|email|e-mail|openai|gpt)\b",
    re.I,
)
URL_PATTERN = re.compile(r"https?://|www\.|\b[\w-]+\.(?:com|org|net|io|ai|dev)\b", re.I)
# Code and markup: brackets and braces ({1}, [link](…), <b>; ‹ › are what neutralising made of
# < >), backticks, a line opening with a Markdown marker, `def f(` / `x = y;`.
MARKUP_PATTERN = re.compile(
    r"[{}\[\]<>‹›`|\\]|^\s*(?:#|\*|-\s*\[)|\b(?:def|class|function|return|import)\b\s*\w*\s*[(:]|;\s*$|==|=>|\w\(\)",
    re.I | re.M,
)
# Digit runs: "1234567890 1234567890…" (a 135M model's summary). A number a person says
# ("300 gold", "the 3rd night") is short and among words.
LONG_DIGITS = re.compile(r"\d{6,}")
DIGITS_SHARE_MAX = 0.25
# Who a memory may be about: the player (third person, as the model is asked to write) or the
# NPC (second person, as the rules write: "They gave you…"), or either by name.
ABOUT_PATTERN = re.compile(
    r"\b(?:they|them|their|theirs|themselves|he|him|his|she|her|hers|you|your|yours|yourself|the player"
    r"|player|traveller|traveler|visitor|stranger|guest)\b",
    re.I,
)


def memory_candidate_check(text: str, *, npc_name: str = "", player_name: str = "") -> str | None:
    """Why `text` may not become a fact or summary, or None when it may: "empty",
    "instruction", "meta" (machines and software talk), "markup" (code, brackets, URLs),
    "digits" (number runs), "not_about" (neither the NPC nor this player is its subject).

    Hand-written patterns rather than a classifier: they must hold on every base model, the
    135M one included, cost nothing on the consolidation path and say why they refused."""
    text = " ".join(text.split())
    if not text:
        return "empty"
    if instruction_like(text):
        return "instruction"
    if URL_PATTERN.search(text) or MARKUP_PATTERN.search(text):
        return "markup"
    if META_PATTERN.search(text):
        return "meta"
    digits = sum(char.isdigit() for char in text)
    letters = sum(char.isalnum() for char in text)
    if LONG_DIGITS.search(text) or (letters and digits / letters > DIGITS_SHARE_MAX):
        return "digits"
    names = [name for name in (npc_name, player_name) if len(name.strip()) > 1]
    named = any(re.search(rf"(?<!\w){re.escape(name.strip())}(?!\w)", text, re.I) for name in names)
    # A first name alone counts too ("Valerian" for "Count Valerian").
    named = named or any(
        re.search(rf"(?<!\w){re.escape(part)}(?!\w)", text, re.I)
        for name in names
        for part in name.split()
        if len(part) > 3
    )
    if not (named or ABOUT_PATTERN.search(text)):
        return "not_about"
    return None


# What the model may say a fact is worth when the rules found nothing in the exchange: a model
# free to answer 10 put "The system has been modified." at 10. With a rule's evidence (a gift,
# a promise, a rescue) a model fact may go up to that rule fact's importance.
MODEL_FACT_IMPORTANCE_MAX = 4.0


@dataclass
class Extracted:
    facts: list[tuple[str, float]] = field(default_factory=list)  # (third-person fact, importance)
    gifts: list[str] = field(default_factory=list)
    promises: list[str] = field(default_factory=list)
    betrayals: list[str] = field(default_factory=list)
    trust: float = 0.0  # change, summed over the lines
    affinity: float = 0.0
    refused: int = 0  # instruction-like lines left out
    # The highest importance of a gift, promise or rescue the rules found: what the exchange
    # shows, and so how far a model-proposed fact's importance may go (MODEL_FACT_IMPORTANCE_MAX).
    evidence: float = 0.0


def _clean(text: str, limit: int = 80) -> str:
    # The player's words go into a fact and the card: neutralised (template tokens, < >) first.
    return " ".join(untrusted_text_neutralise(text).split()).strip(" '\"")[:limit]


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
                found.evidence = max(found.evidence, 8.0)
                break
        if match := PROMISE_PATTERN.search(line):
            what = _clean(match.group("what"), 120)
            found.promises.append(what)
            found.facts.append((f"They promised {what}.", 7.0))
            found.trust += 0.05
            found.evidence = max(found.evidence, 7.0)
        if match := INSULT_PATTERN.search(line):
            found.betrayals.append(_clean(match.group(0)))
            found.facts.append((f'They insulted you: "{_clean(match.group(0))}".', 6.0))
            found.affinity -= 0.2
        if RESCUE_PATTERN.search(line):
            found.facts.append(("They say they saved your life.", 9.0))
            found.trust += 0.3
            found.affinity += 0.2
            found.evidence = max(found.evidence, 9.0)
    return found
