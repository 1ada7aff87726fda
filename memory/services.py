"""Memory writes outside the turn's path: rebuilding a pair's warm tier from the archive,
forgetting a player everywhere, and the public facts designers choose."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
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
    evict_message,
    iso_utc,
    pair_prefix,
    public_facts_key,
    relationship_encode,
)

logger = logging.getLogger(__name__)


def memory_rehydrate(*, redis: Redis, npc: str, player: str) -> int:
    """Rebuild a pair's warm tier from the archive; returns the number of turns restored.

    For a pair whose Redis window expired (30 days without a turn). Runs in a Celery task,
    never in a turn: the turn that found the pair missing went on without its memory, the
    next one finds it. Turns recorded since then are kept: the archive's older turns go after
    them, and card fields already in Redis are newer than the archive's.
    """
    events = MemoryEvent.objects.filter(npc_slug=npc, player_id=player)
    turn_events = events.filter(kind=MemoryEventKind.TURN)
    turns = list(turn_events.order_by("-occurred_at")[: settings.MEMORY_RECENT_TURNS])
    summaries = list(
        events.filter(kind=MemoryEventKind.SUMMARY).order_by("-occurred_at")[: settings.MEMORY_SUMMARIES]
    )
    facts: dict[str, float] = {}
    for event in events.filter(kind=MemoryEventKind.FACT).order_by("occurred_at"):
        facts[str(event.payload.get("text", ""))[:200]] = float(event.payload.get("importance", 1))
    cards: dict[str, dict[str, Any]] = {"relationship": {}, "quest": {}}
    for event in events.filter(kind=MemoryEventKind.CARD).order_by("occurred_at"):
        card = cards.get(str(event.payload.get("card")))
        if card is not None:
            card.update(event.payload.get("fields", {}))
    first_turn = turn_events.order_by("occurred_at").first()
    turn_count = turn_events.count()

    prefix, ttl = pair_prefix(npc, player), settings.MEMORY_WARM_TTL_S
    recent = {
        RememberedTurn.loads(raw).at for raw in redis.lrange(prefix + "turns", 0, -1)
    }  # turns recorded since the window expired
    older = [
        RememberedTurn(
            str(event.payload.get("player", "")),
            str(event.payload.get("npc", "")),
            str(event.payload.get("emotion", "")),
            str(event.payload.get("action", "")),
            event.occurred_at.timestamp(),
        )
        for event in turns
    ]
    restored = [turn for turn in older if turn.at not in recent]
    with redis.pipeline(transaction=True) as pipe:
        if restored:
            pipe.rpush(prefix + "turns", *(turn.dumps() for turn in restored))  # newest first
            pipe.ltrim(prefix + "turns", 0, settings.MEMORY_RECENT_TURNS - 1)
        if summaries and not redis.exists(prefix + "summaries"):
            pipe.rpush(
                prefix + "summaries",
                *(json.dumps({"text": event.payload.get("text", ""), "at": event.occurred_at.isoformat()})
                  for event in summaries),
            )  # fmt: skip
        if facts:
            pipe.zadd(prefix + "facts", facts, nx=True)
            pipe.zremrangebyrank(prefix + "facts", 0, -settings.MEMORY_FACTS - 1)
        relationship = dict(cards["relationship"])
        if first_turn is not None:
            relationship.setdefault("first_met", iso_utc(first_turn.occurred_at.timestamp()))
        for field, value in relationship_encode(relationship).items():
            pipe.hsetnx(prefix + "relationship", field, value)
        for field, value in cards["quest"].items():
            pipe.hsetnx(prefix + "quest", field, str(value))
        for name in PAIR_KEYS:
            pipe.expire(prefix + name, ttl)
        pipe.execute()
    # The turn count: every archived turn, or the live count if Redis counted more meanwhile.
    live = int(redis.hget(prefix + "relationship", "turns") or 0)
    redis.hset(prefix + "relationship", "turns", max(live, turn_count))
    # Bridges holding the pair (from turns since the window expired) load it again, whole.
    redis.publish(EVICT_CHANNEL, evict_message(player, npc))
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
    if keys:
        redis.unlink(*keys)
    redis.publish(EVICT_CHANNEL, evict_message(player))
    logger.info("forgot player %s: %d archived events, %d Redis keys", player, deleted, len(keys))
    return ForgetReport(archived_events=deleted, redis_keys=len(keys))


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
