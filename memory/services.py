"""Memory writes outside the turn's path: rebuilding a pair's warm tier from the archive,
forgetting a player everywhere, and the public facts designers choose."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from redis import Redis

from memory.models import ForgottenPlayer, MemoryEvent, MemoryEventKind
from memory.tiers import (
    EVICT_CHANNEL,
    PAIR_KEYS,
    RememberedTurn,
    bond_strength,
    bonds_key,
    evict_message,
    iso_utc,
    pair_prefix,
    public_facts_key,
    relationship_encode,
)

logger = logging.getLogger(__name__)


# One statement for a pair's whole rebuild (a cold prefetch aims at 5 ms; six ORM queries
# took most of that): the recent turns and summaries, every fact and card event, and the turn
# statistics, as rows of (part, occurred_at, payload), each part in the order it is used.
_REHYDRATE_SQL = """
WITH pair AS (
    SELECT kind, occurred_at, payload FROM {table} WHERE npc_slug = %(npc)s AND player_id = %(player)s
)
(SELECT 'turn', occurred_at, payload FROM pair WHERE kind = 'turn' ORDER BY occurred_at DESC LIMIT %(turns)s)
UNION ALL
(SELECT 'summary', occurred_at, payload FROM pair WHERE kind = 'summary'
 ORDER BY occurred_at DESC LIMIT %(summaries)s)
UNION ALL
(SELECT kind, occurred_at, payload FROM pair WHERE kind IN ('fact', 'card') ORDER BY occurred_at)
UNION ALL
(SELECT 'stats', min(occurred_at), jsonb_build_object('turns', count(*)) FROM pair WHERE kind = 'turn')
"""

# Raise the live turn count to the archive's, never lower it (turns recorded since the window
# expired may have counted past it), inside the rebuild's MULTI/EXEC.
_TURNS_AT_LEAST = """
local live = tonumber(redis.call('HGET', KEYS[1], 'turns') or '0')
if live < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'turns', ARGV[1]) end
return 0
"""


_EPOCH = datetime.fromtimestamp(0, tz=UTC)


@dataclass
class ArchivedPair:
    """What the archive holds of one pair, for a rebuild of its warm tier."""

    turns: list[RememberedTurn] = field(default_factory=list)  # newest first
    summaries: list[dict[str, str]] = field(default_factory=list)  # newest first
    facts: dict[str, float] = field(default_factory=dict)
    cards: dict[str, dict[str, Any]] = field(default_factory=lambda: {"relationship": {}, "quest": {}})
    first_turn_at: float | None = None
    turn_count: int = 0


def archived_pair(*, npc: str, player: str) -> ArchivedPair:
    """The archive's rows of a pair, in one query (see _REHYDRATE_SQL)."""
    found = ArchivedPair()
    sql = _REHYDRATE_SQL.format(table=MemoryEvent._meta.db_table)
    params: dict[str, str | int] = {"npc": npc, "player": player, "turns": settings.MEMORY_RECENT_TURNS,
                                    "summaries": settings.MEMORY_SUMMARIES}  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    # Oldest first (UNION ALL keeps no order across its parts): card updates apply in order.
    rows.sort(key=lambda row: row[1] or _EPOCH)
    for part, occurred_at, raw in rows:
        # Django's psycopg setup hands jsonb over as text (JSONField decodes it itself).
        payload = json.loads(raw) if isinstance(raw, str) else raw
        if part == "turn":
            found.turns.append(
                RememberedTurn(
                    str(payload.get("player", "")),
                    str(payload.get("npc", "")),
                    str(payload.get("emotion", "")),
                    str(payload.get("action", "")),
                    occurred_at.timestamp(),
                )  # fmt: skip
            )
        elif part == "summary":
            found.summaries.append({"text": payload.get("text", ""), "at": occurred_at.isoformat()})
        elif part == MemoryEventKind.FACT:
            found.facts[str(payload.get("text", ""))[:200]] = float(payload.get("importance", 1))
        elif part == MemoryEventKind.CARD:
            card = found.cards.get(str(payload.get("card")))
            if card is not None:
                card.update(payload.get("fields", {}))
        elif part == "stats":
            found.turn_count = int(payload["turns"])
            found.first_turn_at = occurred_at.timestamp() if occurred_at else None
    found.turns.reverse()  # newest first, as Redis keeps them
    found.summaries.reverse()
    return found


# A turn's archived time is its Redis time rounded to microseconds (older events were stamped a
# moment after the turn, milliseconds later): the same words within this window are one turn.
_SAME_TURN_WINDOW_S = 2.0


def _same_turn(archived: RememberedTurn, held: RememberedTurn) -> bool:
    return (archived.player, archived.npc) == (held.player, held.npc) and (
        abs(archived.at - held.at) < _SAME_TURN_WINDOW_S
    )


def memory_rehydrate(*, redis: Redis, npc: str, player: str) -> int:
    """Rebuild a pair's warm tier from the archive; returns the number of turns restored.

    For a pair whose Redis window expired (30 days without a turn). Runs in a Celery task,
    never in a turn: the turn that found the pair missing went on without its memory, the
    next one finds it. Turns recorded since then are kept: the archive's older turns go after
    them, and card fields already in Redis are newer than the archive's.
    """
    archived = archived_pair(npc=npc, player=player)
    prefix, ttl = pair_prefix(npc, player), settings.MEMORY_WARM_TTL_S
    with redis.pipeline(transaction=False) as pipe:
        pipe.lrange(prefix + "turns", 0, -1)
        pipe.exists(prefix + "summaries")
        live_turns, has_summaries = pipe.execute()
    # Turns recorded since the window expired (or before a late rebuild ran) stay as they are;
    # an archived turn Redis still holds is not added twice (seen: a new pair's rebuild ran
    # after its first turns were archived, and the NPC remembered a gift twice).
    live = [RememberedTurn.loads(raw) for raw in live_turns]
    restored = [turn for turn in archived.turns if not any(_same_turn(turn, held) for held in live)]
    with redis.pipeline(transaction=True) as pipe:
        if restored:
            pipe.rpush(prefix + "turns", *(turn.dumps() for turn in restored))  # newest first
            pipe.ltrim(prefix + "turns", 0, settings.MEMORY_RECENT_TURNS - 1)
        if archived.summaries and not has_summaries:
            pipe.rpush(prefix + "summaries", *(json.dumps(summary) for summary in archived.summaries))
        if archived.facts:
            pipe.zadd(prefix + "facts", archived.facts, nx=True)
            pipe.zremrangebyrank(prefix + "facts", 0, -settings.MEMORY_FACTS - 1)
        relationship = dict(archived.cards["relationship"])
        if archived.first_turn_at is not None:
            relationship.setdefault("first_met", iso_utc(archived.first_turn_at))
        for name, value in relationship_encode(relationship).items():
            pipe.hsetnx(prefix + "relationship", name, value)
        if "trust" in relationship or "affinity" in relationship:  # NX: a live bond is newer
            pipe.zadd(bonds_key(player), {npc: bond_strength(relationship)}, nx=True)
            pipe.expire(bonds_key(player), ttl)
        for name, value in archived.cards["quest"].items():
            pipe.hsetnx(prefix + "quest", name, str(value))
        pipe.eval(_TURNS_AT_LEAST, 1, prefix + "relationship", archived.turn_count)
        for name in PAIR_KEYS:
            pipe.expire(prefix + name, ttl)
        # Bridges holding the pair (from turns since the window expired) load it again, whole.
        pipe.publish(EVICT_CHANNEL, evict_message(player, npc))
        pipe.execute()
    return len(restored)


@dataclass
class ForgetReport:
    archived_events: int
    redis_keys: int


def player_forget(*, redis: Redis, player: str) -> ForgetReport:
    """Remove `player` from all three tiers.

    Postgres: their archived events are deleted, and a tombstone makes the archiver drop the
    events still on their way (emitted before this moment). Redis: every key of their pairs.
    Hot tiers: every bridge process drops their pairs on a message on EVICT_CHANNEL. The
    archive part holds archive_player_lock, so a compaction never writes a summary of theirs
    after it.
    """
    now = timezone.now()
    with transaction.atomic():
        archive_player_lock(player=player)
        ForgottenPlayer.objects.update_or_create(player_id=player, defaults={"forgotten_at": now})
        deleted, _ = MemoryEvent.objects.filter(player_id=player, occurred_at__lte=now).delete()
    keys = [key for key in redis.scan_iter(match="mem:*", count=1000) if _key_player(key) == player]
    removed = int(redis.unlink(*keys, bonds_key(player)))  # UNLINK counts the keys that existed
    redis.publish(EVICT_CHANNEL, evict_message(player))
    logger.info("forgot player %s: %d archived events, %d Redis keys", player, deleted, removed)
    return ForgetReport(archived_events=deleted, redis_keys=removed)


# The first key of Postgres' two-key advisory locks taken here ("mem" in ASCII), so they never
# meet another feature's.
_PLAYER_LOCK_SPACE = 0x6D656D


def archive_player_lock(*, player: str) -> None:
    """Hold the archive's lock on `player` until the current transaction ends.

    Forgetting a player and writing derived events about them (memory.compaction) take it, so
    that one never runs between the other's check and write: a summary committed after the
    forget read the archive would outlive the player's other events.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("archive_player_lock needs a transaction (it is released at its end)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_PLAYER_LOCK_SPACE, player])


class FactNotRemembered(ValueError):
    """The pair holds no such fact (Redis forgot it, or the form was not one of ours)."""


def public_fact_publish(*, redis: Redis, npc: str, player: str, fact: str, actor: str = "") -> float:
    """Copy one of the pair's facts, with its importance, into `npc`'s public facts, which every
    player's prompt includes; returns the importance.

    Only a fact Redis holds for the pair can be published, so the text and its importance are
    what consolidation stored, never what a form sent. Bridges that hold a pair in their hot
    tier see the change when they next load it from Redis (memory.tiers.memory_for_turn):
    after MEMORY_HOT_TTL_S without a turn, or after the pair's next consolidation. Evicting
    every pair of the NPC from every bridge would cost one message per player.
    """
    importance = redis.zscore(pair_prefix(npc, player) + "facts", fact)
    if importance is None:
        raise FactNotRemembered(f"{npc} remembers no such fact about {player}")
    redis.zadd(public_facts_key(npc), {fact: float(importance)})
    logger.info(
        "memory: %s made a fact of %s/%s public (importance %s)", actor or "?", npc, player, importance
    )
    return float(importance)


def public_fact_unpublish(*, redis: Redis, npc: str, fact: str, actor: str = "") -> bool:
    """Take `fact` out of `npc`'s public facts; returns whether it was there. The pair it came
    from keeps it."""
    removed = bool(redis.zrem(public_facts_key(npc), fact))
    if removed:
        logger.info("memory: %s took a public fact of %s back", actor or "?", npc)
    return removed


def _key_player(key: bytes | str) -> str | None:
    """The player of a pair key `mem:{npc}:{player}:{name}`; NPC slugs hold no colon, player
    ids may, so the player is what lies between the NPC and a known key name."""
    text = key.decode() if isinstance(key, bytes) else key
    _, npc_and_rest = text.split(":", 1) if text.startswith("mem:") else ("", "")
    npc, _, rest = npc_and_rest.partition(":")
    for name in PAIR_KEYS:
        if rest.endswith(":" + name) and npc:
            return rest[: -len(name) - 1]
    return None
