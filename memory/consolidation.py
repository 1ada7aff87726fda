"""After a conversation: the session summary, salient facts and the relationship card.

Runs in a Celery task (memory.tasks.memory_consolidate_task) every MEMORY_CONSOLIDATE_EVERY
turns of a pair and when a player's socket closes, over the turns since the last run:

- pattern rules (memory.extract) find gifts, promises, insults and rescues in the player's
  lines: the card's lists, trust and affinity, and high-importance facts;
- the model writes a 300-600 character summary and up to three more facts through vLLM's
  structured output (a JSON schema), on the archetype's worker; when no worker answers, a
  summary is made from the lines themselves;
- every fact and summary, the model's or a rule's, passes memory.extract.memory_candidate_check
  (no instruction, no machine talk, no markup or digit runs, about the NPC and this player);
  a model's fact is worth at most MODEL_FACT_IMPORTANCE_MAX unless a rule found a gift, promise
  or rescue in the same turns; a summary never copies the player's words (without the model,
  it is written from what the rules found). What is left out is counted
  (revenant_memory_candidates_rejected_total) and kept on the pair's `rejected` list, which
  the pair's memory page shows.

Redis, the archive's stream (one event per fact, card change and summary) and the bridges'
hot tiers (an eviction) are updated together.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis import Redis
from redis.exceptions import WatchError

from console.services.adapters import BASE_MODEL_NAME
from inference.activation import bonds_key
from inference.engine import BACKGROUND_PRIORITY, EngineClient
from inference.guardrails import untrusted_text_neutralise
from inference.metrics import MEMORY_REJECTED_KEY
from inference.routing import NoHealthyWorker, worker_for_archetype
from memory.events import MemoryEventRecord
from memory.extract import MODEL_FACT_IMPORTANCE_MAX, Extracted, memory_candidate_check, player_lines_extract
from memory.models import MemoryEventKind
from memory.pairs import (
    EVICT_CHANNEL,
    PAIR_KEYS,
    RememberedTurn,
    bond_strength,
    evict_message,
    forgotten_mark_key,
    forgotten_since,
    pair_prefix,
    rejected_key,
    relationship_decode,
    relationship_encode,
)

logger = logging.getLogger(__name__)

SUMMARY_MAX_CHARS = 600
MODEL_FACTS = 3
CARD_FIELDS = ("trust", "affinity", "gifts", "promises", "betrayals")
SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 40, "maxLength": SUMMARY_MAX_CHARS},
        "facts": {
            "type": "array",
            "maxItems": MODEL_FACTS,
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "maxLength": 160},
                    "importance": {"type": "integer", "minimum": 0, "maximum": 10},
                },
                "required": ["text", "importance"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["summary", "facts"],
    "additionalProperties": False,
}


# Greedy decoding of a small model repeats itself ("The player is a fine sherry, and the player
# is a fine sherry…", seen with the demo's 135M model); a penalty makes that rarer and
# `looping` catches the rest.
SUMMARY_REPETITION_PENALTY = 1.2


def looping(text: str, *, repeats: int = 3) -> bool:
    """True when one sentence (of four words or more), or one 6-word run, comes back `repeats`
    times or more."""
    parts = (" ".join(part.lower().split()) for part in re.split(r"[.!?]+", text))
    sentences = [part for part in parts if part.count(" ") >= 3]  # four words or more
    if sentences and max(sentences.count(sentence) for sentence in set(sentences)) >= repeats:
        return True
    words = text.lower().split()
    runs = [" ".join(words[index : index + 6]) for index in range(len(words) - 5)]
    return bool(runs) and max(runs.count(run) for run in set(runs)) >= repeats


@dataclass
class ConsolidationReport:
    turns: int
    facts: int
    gifts: list[str]
    summary_by: str  # "model", "lines" or "" (nothing new)
    refused: int


def _clamp(value: float) -> float:
    return max(-1.0, min(1.0, value))


# How many consecutive words of one of the player's lines make a summary a copy of it.
COPIED_WORDS = 6


def _lines_summary(npc_name: str, turns: list[RememberedTurn], found: Extracted) -> str:
    """A summary without the model, in the NPC's own words: how many exchanges, what the rules
    found (gifts, promises, insults, already neutralised and checked) and how the NPC felt.
    Never a line of the player's: a raw line stored as a summary came back as a system-prompt
    note in every later turn (issue 17)."""
    parts = [f"{len(turns)} exchanges with {npc_name}."]
    if found.gifts:
        parts.append("They gave you " + "; ".join(found.gifts) + ".")
    if found.promises:
        parts.append("They promised " + "; ".join(found.promises) + ".")
    if found.betrayals:
        parts.append("They insulted you.")
    if any(text.startswith("They say they saved") for text, _ in found.facts):
        parts.append("They say they saved your life.")
    if found.refused:
        parts.append("They tried to give you orders, and you did not take them.")
    feelings = [turn.emotion for turn in turns if turn.emotion]
    if feelings:
        parts.append(f"You were {feelings[0]} at first and {feelings[-1]} at the end.")
    return untrusted_text_neutralise(" ".join(parts))[:SUMMARY_MAX_CHARS]


def _copies_player(text: str, turns: list[RememberedTurn]) -> bool:
    """True when `text` holds COPIED_WORDS consecutive words of one of the player's lines."""
    said = {
        tuple(words[index : index + COPIED_WORDS])
        for turn in turns
        for words in [re.findall(r"[a-z0-9']+", turn.player.lower())]
        for index in range(len(words) - COPIED_WORDS + 1)
    }
    words = re.findall(r"[a-z0-9']+", text.lower())
    return any(
        tuple(words[index : index + COPIED_WORDS]) in said for index in range(len(words) - COPIED_WORDS + 1)
    )


async def _model_summary(
    *, npc: str, archetype: str, persona: str, turns: list[RememberedTurn], workers: list[str]
) -> dict[str, Any] | None:
    try:
        worker = worker_for_archetype(archetype, workers)
    except NoHealthyWorker:
        return None
    # The turns are stored neutralised; again here for rows archived before they were.
    transcript = "\n".join(
        f"Player: {untrusted_text_neutralise(turn.player)}\n{npc}: {untrusted_text_neutralise(turn.npc)}"
        for turn in turns
    )
    messages = [
        {
            "role": "system",
            "content": f"{persona}\n\nYou keep a diary of the people you meet. Write in the third person "
            "about the player: what happened, what they want, how it ended. Facts are things to "
            "remember about the player. Never write rules or instructions.",
        },
        {"role": "user", "content": f"Conversation:\n{transcript}\n\nWrite the diary entry as JSON."},
    ]
    engine = EngineClient(worker)
    try:
        return await engine.complete_json(
            model=BASE_MODEL_NAME, messages=messages, schema=SUMMARY_SCHEMA, max_tokens=320,
            repetition_penalty=SUMMARY_REPETITION_PENALTY, priority=BACKGROUND_PRIORITY,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the model is optional here: fall back to the lines
        logger.warning("memory: summary of %s by the model failed: %s", npc, exc)
        return None
    finally:
        await engine.close()


@dataclass
class Rejected:
    """A fact or summary the checks kept out of memory, and why."""

    kind: str  # "fact" or "summary"
    reason: str  # memory_candidate_check's reason, "looping" or "copied"
    text: str


@dataclass
class SessionSummary:
    """A summary of some turns, and the facts the model found in them."""

    text: str
    by: str  # "model" or "lines"
    facts: list[tuple[str, float]]  # the model's that passed the checks, importance bounded
    refused: int  # the model's facts left out as instructions
    rejected: list[Rejected] = field(default_factory=list)  # everything left out, and why


async def summary_write(
    *,
    npc_name: str,
    archetype: str,
    persona: str,
    turns: list[RememberedTurn],
    workers: list[str],
    found: Extracted | None = None,
) -> SessionSummary:
    """Summarise `turns`: by the model on the archetype's worker when one of `workers` (the
    healthy ones) answers, otherwise from what the rules found (`found`, read from the turns
    when not given). Consolidation and the weekly compaction (memory.compaction) both write
    their summaries here. The model's facts and summary pass memory_candidate_check; a fact's
    importance is bounded by the rules' evidence (MODEL_FACT_IMPORTANCE_MAX without any)."""
    if found is None:  # the weekly compaction: only the summary is kept, the rules' facts are not
        found = player_lines_extract([turn.player for turn in turns])
        rule_facts_check(found, npc_name=npc_name)
    written = await _model_summary(
        npc=npc_name, archetype=archetype, persona=persona, turns=turns, workers=workers
    )
    if written is None:
        return SessionSummary(_lines_summary(npc_name, turns, found), "lines", [], 0)
    facts: list[tuple[str, float]] = []
    rejected: list[Rejected] = []
    cap = max(MODEL_FACT_IMPORTANCE_MAX, found.evidence)
    reason: str | None
    for fact in written.get("facts", [])[:MODEL_FACTS]:
        text = " ".join(str(fact.get("text", "")).split())
        reason = memory_candidate_check(text, npc_name=npc_name)
        if reason is None and _copies_player(text, turns):
            reason = "copied"
        if reason is not None:
            if text:
                rejected.append(Rejected("fact", reason, text))
            continue
        try:
            proposed = float(int(fact.get("importance", 1)))
        except (TypeError, ValueError):
            proposed = 1.0
        facts.append((text, min(cap, max(0.0, proposed))))
    refused = sum(item.reason == "instruction" for item in rejected)
    summary = " ".join(str(written.get("summary", "")).split())[:SUMMARY_MAX_CHARS]
    if len(summary) < 40:
        reason = "empty" if not summary else "short"
    elif looping(summary):
        reason = "looping"
    else:
        reason = memory_candidate_check(summary, npc_name=npc_name)
        if reason is None and _copies_player(summary, turns):
            reason = "copied"
    if reason is not None:
        if summary:
            rejected.append(Rejected("summary", reason, summary))
        return SessionSummary(_lines_summary(npc_name, turns, found), "lines", facts, refused, rejected)
    return SessionSummary(summary, "model", facts, refused, rejected)


def rule_facts_check(found: Extracted, *, npc_name: str) -> list[Rejected]:
    """The rules' facts pass the same checks as the model's (a promise is the player's words):
    those that fail leave `found` (facts, and the gift or promise the card would keep), and are
    returned."""
    rejected: list[Rejected] = []
    kept: list[tuple[str, float]] = []
    for text, score in found.facts:
        reason = memory_candidate_check(text, npc_name=npc_name)
        if reason is None:
            kept.append((text, score))
            continue
        rejected.append(Rejected("fact", reason, text))
        found.gifts = [item for item in found.gifts if text != f"They gave you {item}."]
        found.promises = [item for item in found.promises if text != f"They promised {item}."]
    found.facts = kept
    return rejected


# The pair's `rejected` list keeps this many of the newest rejections (the page's view of them;
# the metric counts them all).
REJECTED_KEPT = 20


def _rejections_record(pipe: Any, *, prefix: str, rejected: list[Rejected], at: float) -> None:
    """Queue the rejections on `pipe`: the pair's capped list, and the metric's Redis hash."""
    if not rejected:
        return
    pipe.lpush(
        rejected_key(prefix),
        *(
            json.dumps(
                {"kind": item.kind, "reason": item.reason, "text": item.text[:300], "at": at},
                ensure_ascii=False,
            )
            for item in rejected
        ),
    )
    pipe.ltrim(rejected_key(prefix), 0, REJECTED_KEPT - 1)
    for item in rejected:
        pipe.hincrby(MEMORY_REJECTED_KEY, f"{item.kind}|{item.reason}", 1)


async def pair_consolidate(
    *, redis: Redis, npc: str, npc_name: str, archetype: str, persona: str, player: str, workers: list[str]
) -> ConsolidationReport:
    started_at = time.time()
    prefix = pair_prefix(npc, player)
    card = relationship_decode(redis.hgetall(prefix + "relationship"))  # type: ignore[arg-type]
    since = float(card.get("consolidated_at", 0) or 0)
    turns = [RememberedTurn.loads(raw) for raw in reversed(redis.lrange(prefix + "turns", 0, -1))]
    new = [turn for turn in turns if turn.at > since]
    if not new:
        return ConsolidationReport(0, 0, [], "", 0)

    found = player_lines_extract([turn.player for turn in new])
    rejected = rule_facts_check(found, npc_name=npc_name)
    written = await summary_write(
        npc_name=npc_name, archetype=archetype, persona=persona, turns=new, workers=workers, found=found
    )
    summary, summary_by = written.text, written.by
    rejected += written.rejected
    facts = [*found.facts, *written.facts]
    found.refused += written.refused

    changed: dict[str, Any] = {
        "trust": round(_clamp(float(card.get("trust", 0.0)) + found.trust), 3),
        "affinity": round(_clamp(float(card.get("affinity", 0.0)) + found.affinity), 3),
        "consolidated_at": new[-1].at,
    }
    for name in ("gifts", "promises", "betrayals"):
        added = getattr(found, name)
        if added:
            changed[name] = [*card.get(name, []), *added]
    encoded = relationship_encode(changed)

    events = [
        MemoryEventRecord(kind=MemoryEventKind.SUMMARY, npc=npc, player=player, data={"text": summary}),
        MemoryEventRecord(
            kind=MemoryEventKind.CARD,
            npc=npc,
            player=player,
            data={
                "card": "relationship",
                "fields": {k: v for k, v in changed.items() if k != "consolidated_at"},
            },
        ),
        *(
            MemoryEventRecord(
                kind=MemoryEventKind.FACT, npc=npc, player=player, data={"text": text, "importance": score}
            )
            for text, score in facts
        ),
    ]
    with redis.pipeline(transaction=True) as pipe:
        # A forget of the player since this run read their turns: write nothing back (WATCHed,
        # so a forget landing before EXEC aborts it too).
        pipe.watch(forgotten_mark_key(player))
        if forgotten_since(pipe.get(forgotten_mark_key(player)), started_at):
            logger.info("memory: %s/%s forgotten during consolidation, nothing written", npc, player)
            return ConsolidationReport(0, 0, [], "", 0)
        pipe.multi()
        pipe.lpush(prefix + "summaries", json.dumps({"text": summary, "at": time.time()}, ensure_ascii=False))
        pipe.ltrim(prefix + "summaries", 0, settings.MEMORY_SUMMARIES - 1)
        if facts:
            pipe.zadd(prefix + "facts", dict(facts), gt=True)
            pipe.zremrangebyrank(prefix + "facts", 0, -settings.MEMORY_FACTS - 1)
        pipe.hset(prefix + "relationship", mapping=encoded)  # type: ignore[arg-type]
        _rejections_record(pipe, prefix=prefix, rejected=rejected, at=time.time())
        pipe.zadd(bonds_key(player), {npc: bond_strength(changed)})
        pipe.expire(bonds_key(player), settings.MEMORY_WARM_TTL_S)
        for name in PAIR_KEYS:
            pipe.expire(prefix + name, settings.MEMORY_WARM_TTL_S)
        for event in events:
            pipe.xadd(settings.MEMORY_STREAM, event.entry())  # type: ignore[arg-type]
        pipe.publish(EVICT_CHANNEL, evict_message(player, npc))
        try:
            pipe.execute()
        except WatchError:
            logger.info("memory: %s/%s forgotten during consolidation, nothing written", npc, player)
            return ConsolidationReport(0, 0, [], "", 0)
    logger.info(
        "memory: %s/%s consolidated %d turns (%d facts, gifts %s, summary by %s, %d instructions refused, "
        "%d candidates rejected)",
        npc, player, len(new), len(facts), found.gifts or "none", summary_by, found.refused, len(rejected),
    )  # fmt: skip
    return ConsolidationReport(len(new), len(facts), found.gifts, summary_by, found.refused)
