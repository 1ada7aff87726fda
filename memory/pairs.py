"""The memory of one NPC-player pair: hot in this process, warm in Redis (the archive in
Postgres is memory.events and memory.archiver), and the turn's two calls into it.

Warm (Redis, MEMORY_WARM_TTL_S after the last write, 30 days by default), one key per
structure under `mem:{npc}:{player}:`

    turns        LIST   newest first, MEMORY_RECENT_TURNS entries: {"p", "n", "e", "a", "at"}
    summaries    LIST   newest first, MEMORY_SUMMARIES entries: {"text", "at"} (300-600 chars)
    facts        ZSET   fact text -> importance 0..10, the MEMORY_FACTS most important kept
    emotions     LIST   newest first, the NPC's emotion after each turn: "at|emotion"
    relationship HASH   the relationship card: trust, affinity (-1..1), turns, first_met,
                        last_seen, and gifts / promises / betrayals as JSON lists
    quest        HASH   the quest card: quest name -> stage (slugs)
    rejected     LIST   newest first, the last REJECTED_KEPT facts and summaries consolidation
                        left out, and why (memory.consolidation; the pair's memory page shows them)

Public facts a designer marked for every player live under `mem-public:{npc}:facts`.

Hot (this process): the same, per pair, in an LRU of MEMORY_HOT_PAIRS entries that expire
MEMORY_HOT_TTL_S after the last interaction. A turn reads memory from the hot tier, or on a
miss with one Redis round trip; it writes the hot tier, Redis and the event stream in one
transaction (MULTI/EXEC). Postgres is never on the turn's path.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from console.caches import ProcessCache
from console.redis_clients import redis_sync, redis_text
from inference.guardrails import player_text_clean, untrusted_text_neutralise
from memory.events import MemoryEventRecord, turn_event_id
from memory.models import MemoryEventKind

logger = logging.getLogger(__name__)

CARD_MAX_BYTES = 2048
# "rejected" is a pair key like the others: its TTL is refreshed with theirs, and forgetting
# the player removes it (what the checks left out may quote them).
PAIR_KEYS = ("turns", "summaries", "facts", "emotions", "relationship", "quest", "rejected")
# Every bridge process drops pairs from its hot tier on a message here: {"player": …} drops all
# of a forgotten player's pairs, {"player": …, "npc": …} one pair rebuilt from the archive.
EVICT_CHANNEL = "memory:evict"
CARD_LIST_MAX = 5  # gifts, promises, betrayals kept on the card (the archive keeps them all)


def pair_prefix(npc: str, player: str) -> str:
    return f"mem:{npc}:{player}:"


def rejected_key(prefix: str) -> str:
    """The pair's list of candidates the checks left out (see the module's docstring)."""
    return prefix + "rejected"


def public_facts_key(npc: str) -> str:
    # Outside the `mem:` pair namespace: under it, a player whose id is "public" would own
    # these keys (and forgetting that player would delete them).
    return f"mem-public:{npc}:facts"


@dataclass
class RememberedTurn:
    player: str
    npc: str
    emotion: str = ""
    action: str = ""
    at: float = 0.0

    def dumps(self) -> str:
        return json.dumps(
            {"p": self.player, "n": self.npc, "e": self.emotion, "a": self.action, "at": self.at},
            ensure_ascii=False,
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> RememberedTurn:
        value = json.loads(raw)
        return cls(value["p"], value["n"], value.get("e", ""), value.get("a", ""), value.get("at", 0.0))


@dataclass
class PairMemory:
    """What an NPC remembers of one player (plus the NPC's public facts)."""

    turns: deque[RememberedTurn] = field(default_factory=lambda: deque(maxlen=settings.MEMORY_RECENT_TURNS))
    summary: str = ""
    facts: list[tuple[str, float]] = field(default_factory=list)  # most important first
    public_facts: list[tuple[str, float]] = field(default_factory=list)
    relationship: dict[str, Any] = field(default_factory=dict)
    quest: dict[str, str] = field(default_factory=dict)
    emotions: list[str] = field(default_factory=list)  # newest first

    @property
    def empty(self) -> bool:
        return not (self.turns or self.summary or self.facts or self.relationship or self.quest)


def bond_strength(card: dict[str, Any]) -> float:
    """How much the relationship matters, 0..1: trust, or affinity either way (a sworn enemy
    deserves a full answer as much as a friend)."""
    return round(max(float(card.get("trust", 0.0)), abs(float(card.get("affinity", 0.0)))), 3)


def relationship_decode(raw: dict[bytes, bytes] | dict[str, str]) -> dict[str, Any]:
    card: dict[str, Any] = {}
    for key, value in raw.items():
        name, text = redis_text(key), redis_text(value)
        if name in ("gifts", "promises", "betrayals"):
            card[name] = json.loads(text)
        elif name in ("trust", "affinity"):
            card[name] = float(text)
        elif name == "turns":
            card[name] = int(text)
        else:
            card[name] = text
    return card


def relationship_encode(card: dict[str, Any]) -> dict[str, str]:
    """The card as Redis hash fields, lists cut to CARD_LIST_MAX and the whole under 2 KB."""
    encoded: dict[str, str] = {}
    for name, value in card.items():
        if isinstance(value, list):
            value = json.dumps(value[-CARD_LIST_MAX:], ensure_ascii=False)
        encoded[name] = str(value)
    while sum(len(k) + len(v.encode()) for k, v in encoded.items()) > CARD_MAX_BYTES:
        longest = max(("gifts", "promises", "betrayals"), key=lambda n: len(encoded.get(n, "")))
        items = json.loads(encoded.get(longest, "[]"))
        if not items:
            raise ValueError("a relationship card over 2 KB without lists to shorten")
        encoded[longest] = json.dumps(items[1:], ensure_ascii=False)
    return encoded


class HotMemory:
    """Per-process memory of recently active pairs: an LRU whose entries expire after the
    last interaction (a console.caches.ProcessCache, re-set on every turn; thread-safe, as
    evictions arrive on the listener's thread)."""

    def __init__(self, *, max_pairs: int | None = None, ttl_s: float | None = None) -> None:
        self._pairs: ProcessCache[tuple[str, str], PairMemory] = ProcessCache(
            "memory.pairs.hot",
            ttl_s=ttl_s or settings.MEMORY_HOT_TTL_S,
            maxsize=max_pairs or settings.MEMORY_HOT_PAIRS,
        )

    def get(self, npc: str, player: str) -> PairMemory | None:
        return self._pairs.get((npc, player))

    def put(self, npc: str, player: str, memory: PairMemory) -> None:
        self._pairs.set((npc, player), memory)

    def evict(self, player: str, npc: str | None = None) -> int:
        return self._pairs.pop_where(lambda key: key[1] == player and npc in (None, key[0]))

    def __len__(self) -> int:
        return len(self._pairs)


_hot = HotMemory()


def hot_memory() -> HotMemory:
    return _hot


async def warm_load(redis: Redis, npc: str, player: str) -> PairMemory:
    """A pair's memory from Redis in one round trip."""
    prefix = pair_prefix(npc, player)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lrange(prefix + "turns", 0, settings.MEMORY_RECENT_TURNS - 1)
        pipe.lindex(prefix + "summaries", 0)
        pipe.zrevrange(prefix + "facts", 0, settings.MEMORY_FACTS - 1, withscores=True)
        pipe.zrevrange(public_facts_key(npc), 0, settings.MEMORY_FACTS - 1, withscores=True)
        pipe.hgetall(prefix + "relationship")
        pipe.hgetall(prefix + "quest")
        pipe.lrange(prefix + "emotions", 0, 9)
        turns, summary, facts, public, relationship, quest, emotions = await pipe.execute()
    memory = PairMemory()
    memory.turns.extend(RememberedTurn.loads(raw) for raw in reversed(turns))
    memory.summary = json.loads(summary)["text"] if summary else ""
    memory.facts = [(redis_text(text), score) for text, score in facts]
    memory.public_facts = [(redis_text(text), score) for text, score in public]
    memory.relationship = relationship_decode(relationship)
    memory.quest = {redis_text(k): redis_text(v) for k, v in quest.items()}
    memory.emotions = [redis_text(value).partition("|")[2] for value in emotions]
    return memory


async def memory_for_turn(redis: Redis, npc: str, player: str) -> tuple[PairMemory, str]:
    """The pair's memory for a turn, and where it came from: "hot", "warm" or "none" (a pair
    Redis no longer holds; the caller schedules a rehydration from the archive)."""
    _evict_listener_ensure()
    hot = _hot.get(npc, player)
    if hot is not None:
        return hot, "hot"
    memory = await warm_load(redis, npc, player)
    if memory.empty:
        # Not cached: once the pair's first turn (or a rehydration) is in Redis, the next turn loads it.
        return memory, "none"
    _hot.put(npc, player, memory)
    return memory, "warm"


_listener: threading.Thread | None = None


def _evict_listener_ensure() -> None:
    """One subscriber to EVICT_CHANNEL per process, in a daemon thread.

    A thread rather than an asyncio task: a pub/sub read cancelled at an event loop's shutdown
    hung that shutdown (seen in the tests, whose loops close after every scenario), and a
    daemon thread never holds up the process.
    """
    global _listener
    if _listener is None or not _listener.is_alive():
        _listener = threading.Thread(target=_evict_listen, name="memory-evict", daemon=True)
        _listener.start()


def _evict_listen() -> None:
    client = redis_sync()
    while True:
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(EVICT_CHANNEL)
            while True:
                # Waits at most one health-check interval, so that the connection is PINGed while
                # idle: pubsub.listen() blocks without a timeout, and a connection that died
                # silently (a Redis failover) would leave this process's hot tier unevicted.
                message = pubsub.get_message(timeout=settings.REDIS_HEALTH_CHECK_S)
                if message is not None and message["type"] == "message":
                    target = json.loads(message["data"])
                    _hot.evict(target["player"], target.get("npc"))
        except RedisError as exc:
            logger.warning("memory: eviction listener lost Redis (%s); resubscribing", exc)
            time.sleep(1.0)


# How long a forget is remembered in Redis: past the longest write still in flight when it ran
# (a consolidation retries for 10 minutes, a turn lasts seconds).
FORGOTTEN_MARK_TTL_S = 24 * 3600


def forgotten_mark_key(player: str) -> str:
    """When `player` was last forgotten (epoch seconds), outside the `mem:` namespace: a write
    that began before that moment (a turn in flight, a consolidation) must not bring back the
    keys the forget removed. memory.services.player_forget sets it before it removes anything;
    memory_record_turn and pair_consolidate WATCH it and drop their write if it moved past
    their start."""
    return f"mem-forgotten:{player}"


def forgotten_since(value: bytes | str | None, started_at: float) -> bool:
    """The mark's value says the player was forgotten at or after `started_at`."""
    return value is not None and float(value) >= started_at


def evict_message(player: str, npc: str | None = None) -> str:
    return json.dumps({"player": player, **({"npc": npc} if npc else {})})


async def memory_record_turn(
    redis: Redis,
    *,
    npc: str,
    player: str,
    session: str,
    player_text: str,
    npc_text: str,
    emotion: str,
    action: str,
    trace: dict[str, Any] | None = None,
    started_at: float | None = None,
) -> int:
    """Remember a finished turn: the hot tier, the warm tier and the archive's event stream,
    the last two in one MULTI/EXEC. Returns how many turns the pair has had (0 when the player
    was forgotten after the turn began at `started_at`: nothing is written). The archived event
    also keeps the turn's `trace` (the console's trace page explains a turn from it)."""
    now = time.time()
    started_at = now if started_at is None else started_at
    # Stored cleaned: the player's words come back in later prompts (recent turns, the rules'
    # facts, summaries), and a template token or markup kept here would outlive any one prompt.
    player_text = untrusted_text_neutralise(player_text_clean(player_text))
    turn = RememberedTurn(player_text, npc_text, emotion, action, now)
    # The turn path loaded the pair before the turn: from here (hot), from Redis (now hot), or
    # found nothing, and then this turn is all there is (a rehydration evicts it when done).
    memory = _hot.get(npc, player) or PairMemory()
    memory.turns.append(turn)
    memory.emotions.insert(0, emotion)
    del memory.emotions[10:]
    card = memory.relationship
    card["turns"] = int(card.get("turns", 0)) + 1
    card.setdefault("first_met", iso_utc(now))
    card["last_seen"] = iso_utc(now)
    _hot.put(npc, player, memory)  # re-set: the 30 minutes start again

    record = MemoryEventRecord(
        kind=MemoryEventKind.TURN,
        npc=npc,
        player=player,
        session=session,
        data={
            "player": player_text,
            "npc": npc_text,
            "emotion": emotion,
            "action": action,
            **({"trace": trace} if trace else {}),
        },  # fmt: skip
        **({"event_id": turn_event_id(trace["turn_id"])} if trace and trace.get("turn_id") else {}),
        occurred_at=datetime.fromtimestamp(now, UTC),  # the turn's own time: a rebuild matches on it
    )
    prefix, ttl = pair_prefix(npc, player), settings.MEMORY_WARM_TTL_S
    async with redis.pipeline(transaction=True) as pipe:
        # WATCHed: a forget landing between this check and EXEC aborts the write (WatchError).
        await pipe.watch(forgotten_mark_key(player))
        if forgotten_since(await pipe.get(forgotten_mark_key(player)), started_at):
            _hot.evict(player, npc)
            return 0
        pipe.multi()
        pipe.lpush(prefix + "turns", turn.dumps())
        pipe.ltrim(prefix + "turns", 0, settings.MEMORY_RECENT_TURNS - 1)
        pipe.lpush(prefix + "emotions", f"{now:.0f}|{emotion}")
        pipe.ltrim(prefix + "emotions", 0, 49)
        pipe.hincrby(prefix + "relationship", "turns", 1)
        pipe.hsetnx(prefix + "relationship", "first_met", card["first_met"])
        pipe.hset(prefix + "relationship", "last_seen", iso_utc(now))
        for name in PAIR_KEYS:
            pipe.expire(prefix + name, ttl)
        pipe.xadd(settings.MEMORY_STREAM, record.entry())  # type: ignore[arg-type]
        try:
            results = await pipe.execute()
        except WatchError:
            _hot.evict(player, npc)
            return 0
    return int(results[4])  # HINCRBY's answer: the pair's turn count


class QuestCardFull(ValueError):
    """The quest card would go over CARD_MAX_BYTES."""


class QuestStageInvalid(ValueError):
    """A quest name or stage outside the slug charset (the protocol's, bridge.protocol.Slug)."""


# The protocol's slug charset: a stage reaches the NPC's prompt, so it may carry no markup,
# no template token and no prose. Checked here too, whoever calls (defence in depth).
QUEST_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")

# Check and write in one step: two bridges setting different quests at once each read a card
# that fit, and both wrote (the card reached 5 KB in the test). A script runs alone in Redis.
# KEYS: the quest card, the stream, then the pair's other keys (their TTL is refreshed).
# ARGV: quest, stage, CARD_MAX_BYTES, TTL, the stream entry's field and value.
# Answers {0, size} when refused, {1, name, value, name, value…} (the card) when written.
_QUEST_UPDATE = """
local fields = redis.call('HGETALL', KEYS[1])
local size = #ARGV[1] + #ARGV[2]
for index = 1, #fields, 2 do
  if fields[index] ~= ARGV[1] then size = size + #fields[index] + #fields[index + 1] end
end
if size > tonumber(ARGV[3]) then return {0, size} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for index = 3, #KEYS do redis.call('EXPIRE', KEYS[index], ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[2], '*', ARGV[5], ARGV[6])
local card = redis.call('HGETALL', KEYS[1])
table.insert(card, 1, 1)
return card
"""


async def memory_quest_update(
    redis: Redis, *, npc: str, player: str, session: str, quest: str, stage: str
) -> dict[str, str]:
    """Set one quest's stage on the pair's quest card (the game tells us; the model never
    writes quests): Redis and the archive's stream in one Lua script (the 2 KB check and the
    write are atomic), then the hot tier. Returns the whole card. Raises QuestStageInvalid for
    a name or stage outside the slug charset, QuestCardFull when the card would pass 2 KB."""
    for what, value in (("quest", quest), ("stage", stage)):
        if not QUEST_SLUG.fullmatch(value):
            raise QuestStageInvalid(
                f"the {what} {value[:70]!r} is not a slug: lowercase letters, digits and '-', "
                "starting with a letter or digit, at most 64 characters"
            )
    prefix, ttl = pair_prefix(npc, player), settings.MEMORY_WARM_TTL_S
    record = MemoryEventRecord(
        kind=MemoryEventKind.CARD,
        npc=npc,
        player=player,
        session=session,
        data={"card": "quest", "fields": {quest: stage}},
    )
    ((field_name, entry),) = record.entry().items()
    others = [prefix + name for name in PAIR_KEYS if name != "quest"]
    keys = [prefix + "quest", settings.MEMORY_STREAM, *others]
    answer = await redis.eval(
        _QUEST_UPDATE, len(keys), *keys, quest, stage, CARD_MAX_BYTES, ttl, field_name, entry
    )
    if int(answer[0]) == 0:
        raise QuestCardFull(
            f"the quest card of {player} with {npc} would be {int(answer[1])} bytes "
            f"(limit {CARD_MAX_BYTES}): "
            "reuse quest names, or keep stages short"
        )
    flat = [redis_text(value) for value in answer[1:]]
    card = dict(zip(flat[::2], flat[1::2], strict=True))
    hot = _hot.get(npc, player)
    if hot is not None:
        hot.quest[quest] = stage
    return card


def iso_utc(timestamp: float) -> str:
    """The cards' time format (first_met, last_seen)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
