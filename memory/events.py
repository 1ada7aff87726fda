"""Memory events: what happened to an NPC, appended to a Redis Stream the moment it happens.

The turn's path only appends (XADD, well under a millisecond on loopback); the archiver
(memory.archiver) moves events into Postgres in batches. The stream is never capped by
length: an entry leaves it only once the archiver has committed it, so the event Redis must
keep its data across restarts (AOF on, checked by `redis_aof_ensure`).
"""

from __future__ import annotations

import json
import logging
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from memory.models import MemoryEvent, MemoryEventKind

logger = logging.getLogger(__name__)

# The one field of a stream entry: the event as JSON.
ENTRY_FIELD = "event"
# The archiver's dead-letter stream is MEMORY_STREAM + this.
DEAD_LETTER_SUFFIX = ":dead"
MAX_ID_CHARS = 64


class EventInvalid(ValueError):
    """A stream entry that is not a memory event (the archiver dead-letters it)."""


# A turn's archived event id is derived from its turn_id, so the trace of a turn a client saw
# (turn.end's turn_id) is found by its unique key, not by searching payloads.
TURN_EVENT_NAMESPACE = uuid.UUID("6f1d0c52-8a4e-4b8e-9a57-2c5e3c1f7a10")


def turn_event_id(turn_id: str) -> uuid.UUID:
    return uuid.uuid5(TURN_EVENT_NAMESPACE, turn_id)


@dataclass(frozen=True)
class MemoryEventRecord:
    kind: str
    npc: str
    player: str
    data: dict[str, Any] = field(default_factory=dict)
    session: str = ""
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def entry(self) -> dict[str, str]:
        """The stream entry."""
        return {
            ENTRY_FIELD: json.dumps(
                {
                    "id": str(self.event_id),
                    "kind": self.kind,
                    "npc": self.npc,
                    "player": self.player,
                    "session": self.session,
                    "at": self.occurred_at.isoformat(),
                    "data": self.data,
                },
                ensure_ascii=False,
            )
        }

    def model(self) -> MemoryEvent:
        return MemoryEvent(
            event_id=self.event_id,
            kind=self.kind,
            npc_slug=self.npc,
            player_id=self.player,
            session_id=self.session,
            occurred_at=self.occurred_at,
            payload=self.data,
        )


def event_from_entry(fields: dict[bytes, bytes] | dict[str, str]) -> MemoryEventRecord:
    """Parse a stream entry; EventInvalid says what is wrong with it."""
    raw = fields.get(ENTRY_FIELD) or fields.get(ENTRY_FIELD.encode())  # type: ignore[call-overload]
    if raw is None:
        raise EventInvalid(f"the entry has no {ENTRY_FIELD!r} field")
    try:
        value = json.loads(raw)
        record = MemoryEventRecord(
            kind=value["kind"],
            npc=value["npc"],
            player=value["player"],
            data=value["data"],
            session=value.get("session", ""),
            event_id=uuid.UUID(value["id"]),
            occurred_at=datetime.fromisoformat(value["at"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise EventInvalid(f"not a memory event: {type(exc).__name__}: {exc}") from None
    if record.kind not in MemoryEventKind.values:
        raise EventInvalid(f"unknown kind {record.kind!r}")
    if not isinstance(record.data, dict):
        raise EventInvalid("data must be a JSON object")
    for name in ("npc", "player", "session"):
        value = getattr(record, name)
        if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
            raise EventInvalid(f"{name} must be a string of at most {MAX_ID_CHARS} characters")
        bad = _control_character(value)
        if bad is not None:
            raise EventInvalid(f"{name} holds a control character (U+{ord(bad):04X}): {value!r}")
    if record.occurred_at.tzinfo is None:
        raise EventInvalid("at must carry a time zone")
    return record


def _control_character(text: str) -> str | None:
    """The first control or format character of an id (C0/C1 controls such as NUL or a terminal
    escape, bidi overrides, zero-width marks), if any. Events come from more producers than the
    bridge's protocol checks, and an id is shown on console pages and keys Redis and Postgres
    rows: none of these belongs in one. Event data may hold them (newlines in a line of speech);
    the NUL that Postgres refuses there is dead-lettered by the archiver."""
    return next((char for char in text if unicodedata.category(char) in ("Cc", "Cf")), None)


async def memory_event_emit(redis: AsyncRedis, record: MemoryEventRecord) -> str:
    """Append `record` to the event stream; returns the stream id."""
    stream_id = await redis.xadd(settings.MEMORY_STREAM, record.entry())  # type: ignore[arg-type]
    return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)


def memory_event_emit_sync(redis: Redis, record: MemoryEventRecord) -> str:
    """The same from synchronous code (Celery tasks, management commands)."""
    stream_id = redis.xadd(settings.MEMORY_STREAM, record.entry())  # type: ignore[arg-type]
    return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)


def dead_letters_forget(redis: Redis, *, player: str) -> int:
    """Delete the dead-letter entries naming `player` (forgetting a player); returns how many.

    The stream is capped (MEMORY_ARCHIVE_DEAD_LETTER_MAX), so reading it whole is bounded. An
    entry that is not a memory event goes when it holds the player's id as a JSON string."""
    stream = settings.MEMORY_STREAM + DEAD_LETTER_SUFFIX
    quoted = json.dumps(player, ensure_ascii=False).encode()
    doomed: list[bytes] = []
    start = "-"
    while True:
        page = cast("list[tuple[bytes, dict[bytes, bytes]]]", redis.xrange(stream, min=start, count=1000))
        for stream_id, fields in page:
            raw = fields.get(ENTRY_FIELD.encode(), b"")
            try:
                named = json.loads(raw).get("player") == player
            except (ValueError, AttributeError):
                named = quoted in raw
            if named:
                doomed.append(stream_id)
        if len(page) < 1000:
            break
        start = "(" + page[-1][0].decode()
    return int(redis.xdel(stream, *doomed)) if doomed else 0


class AofDisabled(RuntimeError):
    """The event Redis would lose events on restart."""


def redis_aof_ensure(redis: Redis) -> str:
    """Make sure the event Redis appends to its AOF; returns "on", "turned on" or "off (…)".

    The Redis the stack starts itself (console.localstack.redis_ensure) runs with
    `--appendonly yes`. An external one without AOF (the machine's default one, say) gets it
    turned on at run time when MEMORY_REQUIRE_AOF is set, as a fallback: CONFIG SET lasts until
    that Redis restarts, so it is written to its config file too (CONFIG REWRITE), and a Redis
    started without one is warned about. Raises AofDisabled when it cannot be turned on
    (CONFIG disabled, a managed service).
    """
    try:
        current = redis.config_get("appendonly").get("appendonly")
    except Exception as exc:  # noqa: BLE001 - CONFIG may be renamed away; say so below
        raise AofDisabled(
            f"cannot read the event Redis's appendonly setting ({exc}); turn AOF on there "
            "(appendonly yes) or set MEMORY_REQUIRE_AOF=0 to accept losing events on a Redis restart"
        ) from exc
    if current == "yes":
        return "on"
    if not settings.MEMORY_REQUIRE_AOF:
        logger.warning(
            "the event Redis runs without AOF (MEMORY_REQUIRE_AOF=0): a Redis restart loses the "
            "memory events not yet archived; start it with --appendonly yes"
        )
        return "off (MEMORY_REQUIRE_AOF=0)"
    try:
        redis.config_set("appendonly", "yes")
    except Exception as exc:  # noqa: BLE001 - same as above
        raise AofDisabled(
            f"the event Redis runs without AOF and refused to turn it on ({exc}): start it with "
            "--appendonly yes, or set MEMORY_REQUIRE_AOF=0 to accept losing events on a Redis restart"
        ) from exc
    try:
        redis.config_rewrite()
    except Exception as exc:  # noqa: BLE001 - no config file (started with flags only), or read-only
        logger.warning(
            "the event Redis ran without AOF; it is on now (CONFIG SET) but will be lost when that "
            "Redis restarts, and it cannot be saved to its config file (%s): start it with "
            "--appendonly yes (or appendonly yes in its redis.conf)",
            exc,
        )
    else:
        logger.warning("the event Redis ran without AOF; turned on and saved to its config file")
    return "turned on"
