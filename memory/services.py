"""Memory writes outside the turn's path: rebuilding a pair's warm tier from the archive,
forgetting a player everywhere, and the public facts designers choose."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django_celery_results.models import TaskResult
from redis import Redis

from console.redis_clients import redis_text
from inference.activation import bonds_key
from inference.observability import ops_player_forget
from memory.events import dead_letters_forget
from memory.models import ForgottenPlayer, MemoryEvent, MemoryEventKind
from memory.pairs import (
    EVICT_CHANNEL,
    FORGOTTEN_MARK_TTL_S,
    PAIR_KEYS,
    RememberedTurn,
    bond_strength,
    evict_message,
    forgotten_mark_key,
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
    public_facts: int = 0
    dead_letters: int = 0
    task_results: int = 0
    cost_entries: int = 0


def player_forget(*, redis: Redis, player: str) -> ForgetReport:
    """Remove `player` from all three tiers, and every copy of what they said or did.

    Postgres: their archived events are deleted, and a tombstone makes the archiver drop the
    events still on their way (emitted before this moment); Celery results naming them go too.
    This part holds archive_player_lock exclusively: the archiver inserts under the same lock,
    shared, and checks the tombstone inside that transaction, and a compaction checks it before
    writing a summary, so neither writes a row of theirs after this commit.
    Redis: every key of their pairs, the public facts copied from their pairs' facts, their
    entries in the dead-letter stream, their cost figures. Hot tiers: every bridge process
    drops their pairs on a message on EVICT_CHANNEL. A mark in Redis, set first, makes writes
    still in flight (a turn, a consolidation that began before it) drop themselves.
    """
    redis.set(forgotten_mark_key(player), f"{time.time():.6f}", ex=FORGOTTEN_MARK_TTL_S)
    with transaction.atomic():
        archive_player_lock(player=player)
        # Taken after the lock: events that happened while this waited for it are forgotten too.
        now = timezone.now()
        ForgottenPlayer.objects.update_or_create(player_id=player, defaults={"forgotten_at": now})
        mine = MemoryEvent.objects.filter(player_id=player, occurred_at__lte=now)
        facts = _facts_by_npc(mine.filter(kind=MemoryEventKind.FACT).values_list("npc_slug", "payload"))
        deleted, _ = mine.delete()
        # CELERY_RESULT_EXTENDED keeps each task's arguments (its argsrepr, JSON-encoded) with its
        # result, and memory tasks take the player id: `'alice'` matches alice, not alice2.
        needle = json.dumps(repr(player))[1:-1]
        results, _ = TaskResult.objects.filter(
            Q(task_args__contains=needle) | Q(task_kwargs__contains=needle) | Q(result__contains=needle)
        ).delete()
    keys = [key for key in redis.scan_iter(match="mem:*", count=1000) if _key_player(key) == player]
    for key in keys:
        name = key.decode() if isinstance(key, bytes) else key
        if name.endswith(":facts"):
            npc = name.split(":", 2)[1]
            texts = cast("list[bytes]", redis.zrange(key, 0, -1))
            facts.setdefault(npc, set()).update(redis_text(fact) for fact in texts)
    # A published fact is a copy of one of the pair's facts (public_fact_publish): the same text.
    public = sum(int(redis.zrem(public_facts_key(npc), *texts)) for npc, texts in facts.items() if texts)
    removed = int(redis.unlink(*keys, bonds_key(player)))  # UNLINK counts the keys that existed
    dead = dead_letters_forget(redis, player=player)
    costs = ops_player_forget(redis, player)
    redis.publish(EVICT_CHANNEL, evict_message(player))
    logger.info(
        "forgot player %s: %d archived events, %d Redis keys, %d public facts, %d dead letters, "
        "%d task results, %d cost entries",
        player, deleted, removed, public, dead, results, costs,
    )  # fmt: skip
    return ForgetReport(
        archived_events=deleted, redis_keys=removed, public_facts=public, dead_letters=dead,
        task_results=results, cost_entries=costs,
    )  # fmt: skip


def _facts_by_npc(rows: Iterable[tuple[str, Any]]) -> dict[str, set[str]]:
    facts: dict[str, set[str]] = {}
    for npc, raw in rows:
        payload = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(payload, dict) and payload.get("text"):
            facts.setdefault(npc, set()).add(str(payload["text"])[:200])  # as archived_pair keeps it
    return facts


def player_lock_key(player: str) -> int:
    """The 64-bit key of `player`'s advisory lock: stable across processes, Python and Postgres
    versions (Postgres's hashtext is internal and 32-bit). The personalisation keeps other
    features' single-key locks out of this key space in practice."""
    digest = hashlib.blake2b(player.encode(), digest_size=8, person=b"revenant-player").digest()
    return int.from_bytes(digest, "big", signed=True)


def archive_player_lock(*, player: str) -> None:
    """Hold the archive's lock on `player`, exclusively, until the current transaction ends.

    Forgetting a player takes it while it deletes their events and writes the tombstone;
    writers of their events (the archiver, memory.compaction) hold it too (the archiver shared,
    see archive_players_lock_shared), so that no write runs between a forget and the tombstone
    check that should have stopped it: a row committed after the forget read the archive would
    outlive the player's other events.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("archive_player_lock needs a transaction (it is released at its end)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [player_lock_key(player)])


def archive_players_lock_shared(*, players: Iterable[str]) -> None:
    """Hold the archive's lock on each of `players`, shared, until the current transaction ends:
    archivers do not wait for each other, only for a forget of one of these players."""
    if not connection.in_atomic_block:
        raise RuntimeError("archive_players_lock_shared needs a transaction (it is released at its end)")
    keys = sorted({player_lock_key(player) for player in players})
    if not keys:
        return
    with connection.cursor() as cursor:
        # One round trip for a batch's players, in key order (a fixed order, the habit that keeps
        # lockers of several keys out of deadlocks).
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock_shared(k)) "
            "FROM (SELECT unnest(%s::bigint[]) AS k ORDER BY 1) AS keys",
            [keys],
        )


class FactNotRemembered(ValueError):
    """The pair holds no such fact (Redis forgot it, or the form was not one of ours)."""


def public_fact_publish(*, redis: Redis, npc: str, player: str, fact: str, actor: str = "") -> float:
    """Copy one of the pair's facts, with its importance, into `npc`'s public facts, which every
    player's prompt includes; returns the importance.

    Only a fact Redis holds for the pair can be published, so the text and its importance are
    what consolidation stored, never what a form sent. Bridges that hold a pair in their hot
    tier see the change when they next load it from Redis (memory.pairs.memory_for_turn):
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
