"""Reads of NPC memory outside the turn's path: a pair's warm tier in Redis for the designer
pages, and the archived sessions the weekly compaction summarises.

Every read is bounded: Redis keys are found with SCAN (never KEYS, which blocks the server
the turns run on), and lists are read up to the sizes the tiers keep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet
from redis import Redis

from console.models import NPC
from console.redis_clients import redis_text
from memory.models import MemoryEvent, MemoryEventKind
from memory.pairs import (
    RememberedTurn,
    iso_utc,
    pair_prefix,
    public_facts_key,
    rejected_key,
    relationship_decode,
)

# Players listed per page of an NPC's warm memory.
WARM_PLAYERS_PAGE = 25
# Keys Redis examines per SCAN call, and SCAN calls per page: a page looks at ~10,000 keys at
# most, so an NPC few players talked to on a large Redis ends a page early, with a link onwards.
SCAN_COUNT = 500
SCAN_CALLS_MAX = 20
# Bounds on what a pair page reads; the tiers keep fewer (MEMORY_FACTS, MEMORY_SUMMARIES,
# MEMORY_RECENT_TURNS, 50 emotions), these only guard against keys written by hand.
PAIR_ITEMS_MAX = 100
PUBLIC_FACTS_MAX = 100
NPCS_PAGE = 50


def _glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN MATCH pattern."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def memory_npcs(*, query: str = "") -> QuerySet[NPC]:
    """The NPCs a designer can open the warm memory of, by name; `query` filters name and slug."""
    npcs = NPC.objects.only("slug", "name").order_by("name")
    if query:
        npcs = npcs.filter(Q(name__icontains=query) | Q(slug__icontains=query))
    return npcs


@dataclass(frozen=True)
class WarmPlayer:
    player: str
    relationship: dict[str, Any]


@dataclass(frozen=True)
class WarmPlayersPage:
    players: list[WarmPlayer]  # most recently seen first
    next_cursor: int  # the SCAN cursor of the next page; 0 when this page is the last


def warm_players_page(
    *,
    redis: Redis,
    npc: str,
    cursor: int = 0,
    page_size: int = WARM_PLAYERS_PAGE,
    scan_count: int = SCAN_COUNT,
) -> WarmPlayersPage:
    """The players `npc` remembers in Redis, one page, with their relationship cards.

    Every pair has a relationship card (each turn writes it), so its keys list the players.
    SCAN cannot be cut mid-answer without losing keys, so a page holds `page_size` players
    plus what the last SCAN call returned beyond them (about `scan_count` / 6 at most: six
    keys a pair).
    """
    prefix = f"mem:{npc}:"
    suffix = ":relationship"
    match = f"{_glob_escape(prefix)}*{suffix}"
    keys: list[str] = []
    for _ in range(SCAN_CALLS_MAX):
        cursor, found = redis.scan(cursor=cursor, match=match, count=scan_count)
        keys += [redis_text(key) for key in found]
        if cursor == 0 or len(keys) >= page_size:
            break
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        cards = pipe.execute()
    players = [
        WarmPlayer(player=key[len(prefix) : -len(suffix)], relationship=relationship_decode(card))
        for key, card in zip(keys, cards, strict=True)
        if card  # expired between SCAN and HGETALL
    ]
    players.sort(key=lambda row: str(row.relationship.get("last_seen", "")), reverse=True)
    return WarmPlayersPage(players=players, next_cursor=int(cursor))


@dataclass(frozen=True)
class WarmFact:
    text: str
    importance: float
    public: bool = False  # also in the NPC's public facts


@dataclass(frozen=True)
class WarmSummary:
    text: str
    at: str


@dataclass(frozen=True)
class WarmEmotion:
    emotion: str
    at: str


@dataclass(frozen=True)
class WarmTurn:
    player: str
    npc: str
    emotion: str
    action: str
    at: str


@dataclass(frozen=True)
class WarmPair:
    """What Redis holds of one NPC-player pair, newest first, times in UTC."""

    npc: str
    player: str
    relationship: dict[str, Any] = field(default_factory=dict)
    quest: dict[str, str] = field(default_factory=dict)
    facts: list[WarmFact] = field(default_factory=list)  # most important first
    summaries: list[WarmSummary] = field(default_factory=list)
    emotions: list[WarmEmotion] = field(default_factory=list)
    turns: list[WarmTurn] = field(default_factory=list)
    expires_in_s: int | None = None  # until Redis forgets the pair, unless it talks again

    @property
    def empty(self) -> bool:
        return not (self.relationship or self.quest or self.facts or self.summaries or self.turns)


def _when(value: Any) -> str:
    """A summary's or emotion's time: consolidation writes epoch seconds, a rehydration ISO text."""
    try:
        return iso_utc(float(value))
    except (TypeError, ValueError):
        return str(value or "")


def warm_pair(*, redis: Redis, npc: str, player: str) -> WarmPair:
    """A pair's warm memory in one Redis round trip."""
    prefix = pair_prefix(npc, player)
    last = PAIR_ITEMS_MAX - 1
    with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(prefix + "relationship")
        pipe.hgetall(prefix + "quest")
        pipe.zrevrange(prefix + "facts", 0, last, withscores=True)
        pipe.lrange(prefix + "summaries", 0, last)
        pipe.lrange(prefix + "emotions", 0, last)
        pipe.lrange(prefix + "turns", 0, last)
        pipe.zrange(public_facts_key(npc), 0, PUBLIC_FACTS_MAX - 1)
        pipe.ttl(prefix + "relationship")
        relationship, quest, facts, summaries, emotions, turns, public, ttl = pipe.execute()
    shared = {redis_text(text) for text in public}
    summary_items = []
    for raw in summaries:
        try:
            value = json.loads(raw)
        except ValueError:
            value = {"text": redis_text(raw)}
        summary_items.append(WarmSummary(text=str(value.get("text", "")), at=_when(value.get("at"))))
    emotion_items = []
    for raw in emotions:
        at, _, emotion = redis_text(raw).partition("|")
        emotion_items.append(WarmEmotion(emotion=emotion, at=_when(at)))
    turn_items = []
    for raw in turns:
        turn = RememberedTurn.loads(raw)
        turn_items.append(WarmTurn(turn.player, turn.npc, turn.emotion, turn.action, _when(turn.at)))
    return WarmPair(
        npc=npc,
        player=player,
        relationship=relationship_decode(relationship),
        quest={redis_text(name): redis_text(stage) for name, stage in quest.items()},
        facts=[
            WarmFact(text=redis_text(text), importance=score, public=redis_text(text) in shared)
            for text, score in facts
        ],
        summaries=summary_items,
        emotions=emotion_items,
        turns=turn_items,
        expires_in_s=int(ttl) if int(ttl) >= 0 else None,
    )


def public_facts(*, redis: Redis, npc: str, limit: int = PUBLIC_FACTS_MAX) -> list[WarmFact]:
    """The facts every player's prompt includes for `npc` (the MEMORY_FACTS most important of
    them), most important first."""
    # withscores=True answers (member, score) pairs; redis-py types both of ZRANGE's shapes.
    found = cast(
        "list[tuple[bytes, float]]", redis.zrevrange(public_facts_key(npc), 0, limit - 1, withscores=True)
    )
    return [WarmFact(text=redis_text(text), importance=score, public=True) for text, score in found]


# --- The archive: sessions for the weekly compaction (memory.compaction) -----------------


@dataclass(frozen=True)
class StaleSession:
    """An archived session whose turns are all older than the warm window, not summarised yet."""

    npc: str
    player: str
    session: str
    turns: int
    last_at: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.npc, self.player, self.session)


def _stale_sessions(*, cutoff: datetime, after: tuple[str, str, str] | None = None) -> QuerySet[Any]:
    summarised = MemoryEvent.objects.filter(
        kind=MemoryEventKind.SUMMARY,
        npc_slug=OuterRef("npc_slug"),
        player_id=OuterRef("player_id"),
        session_id=OuterRef("session_id"),
    )
    # Turns without a session (none from the bridge, which always sets one) cannot be told
    # apart from one another: they are left as they are.
    turns = MemoryEvent.objects.filter(kind=MemoryEventKind.TURN).exclude(session_id="")
    if after is not None:
        npc, player, session = after
        turns = turns.filter(
            Q(npc_slug__gt=npc)
            | Q(npc_slug=npc, player_id__gt=player)
            | Q(npc_slug=npc, player_id=player, session_id__gt=session)
        )
    return (
        turns.filter(~Exists(summarised))
        .values("npc_slug", "player_id", "session_id")
        .annotate(last_at=Max("occurred_at"), turns=Count("id"))
        .filter(last_at__lt=cutoff)
        .order_by("npc_slug", "player_id", "session_id")
    )


def stale_sessions_count(*, cutoff: datetime) -> int:
    return _stale_sessions(cutoff=cutoff).count()


def stale_sessions_batch(
    *, cutoff: datetime, after: tuple[str, str, str] | None, limit: int
) -> list[StaleSession]:
    """The next `limit` stale sessions after the session key `after`, in key order.

    Keyset paging rather than re-reading the first page: a session that is skipped (its player
    was forgotten meanwhile) would otherwise come back in every batch.
    """
    return [
        StaleSession(
            npc=row["npc_slug"],
            player=row["player_id"],
            session=row["session_id"],
            turns=row["turns"],
            last_at=row["last_at"],
        )
        for row in _stale_sessions(cutoff=cutoff, after=after)[:limit]
    ]


def session_turns_last(*, npc: str, player: str, session: str, limit: int) -> list[RememberedTurn]:
    """The last `limit` archived turns of a session, oldest first."""
    events = MemoryEvent.objects.filter(
        kind=MemoryEventKind.TURN, npc_slug=npc, player_id=player, session_id=session
    ).order_by("-occurred_at", "-id")[:limit]
    return [
        RememberedTurn(
            str(event.payload.get("player", "")),
            str(event.payload.get("npc", "")),
            str(event.payload.get("emotion", "")),
            str(event.payload.get("action", "")),
            event.occurred_at.timestamp(),
        )
        for event in reversed(list(events))
    ]


@dataclass(frozen=True)
class WarmRejection:
    """A fact or summary consolidation left out of a pair's memory, and why (the checks'
    reason: memory.extract.memory_candidate_check)."""

    kind: str
    reason: str
    text: str
    at: str


def pair_rejections(*, redis: Redis, npc: str, player: str) -> list[WarmRejection]:
    """The newest candidates the checks kept out of the pair's memory (memory.pairs.rejected_key)."""
    found = []
    for raw in cast(
        "list[bytes]", redis.lrange(rejected_key(pair_prefix(npc, player)), 0, PAIR_ITEMS_MAX - 1)
    ):
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        found.append(
            WarmRejection(
                kind=str(value.get("kind", "")),
                reason=str(value.get("reason", "")),
                text=str(value.get("text", "")),
                at=_when(value.get("at")),
            )  # fmt: skip
        )
    return found
