"""The archiver: memory events from the Redis Stream into Postgres, none lost, none twice.

It reads the stream through a consumer group in batches (MEMORY_ARCHIVE_BATCH entries or
MEMORY_ARCHIVE_BLOCK_MS, whichever comes first), writes each batch as one multi-row INSERT
… ON CONFLICT DO NOTHING (idempotent on event_id) and acknowledges the entries only after
the commit: a crash between the two redelivers them, and the conflict clause drops the copies.

- Its own unacknowledged entries (after a crash, a database or Redis outage) are read again
  first, from the group's pending list.
- Entries a dead consumer left pending for MEMORY_ARCHIVE_CLAIM_IDLE_MS are claimed (XAUTOCLAIM),
  on a timer: under steady traffic reads never come back empty.
- An entry that cannot be archived the same way every time (not a memory event, an id with
  control characters, data Postgres refuses such as a NUL) moves at once to the dead-letter
  stream (capped at MEMORY_ARCHIVE_DEAD_LETTER_MAX entries) with the reason, and is
  acknowledged; the rest of its batch is archived. Nothing else is dead-lettered, however
  often it was delivered: an outage is waited out, never counted against an entry.
- Lost connections to Redis or Postgres are retried with exponential backoff: nothing is
  acknowledged that was not committed.
- The insert holds each player's advisory lock, shared, and checks the tombstones of forgotten
  players inside its transaction, so a forget (which holds the lock exclusively) never runs
  between the check and the write.
- Archived entries are trimmed from the stream (XTRIM MINID below the oldest pending entry).

Run it with `python manage.py run_archiver` (`make run` starts one).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DataError, IntegrityError, InterfaceError, OperationalError, transaction
from django.db import connection as db_connection
from psycopg.types.json import Jsonb
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from memory.events import (
    DEAD_LETTER_SUFFIX,
    AofDisabled,
    EventInvalid,
    MemoryEventRecord,
    event_from_entry,
    redis_aof_ensure,
)
from memory.models import ForgottenPlayer, MemoryEvent
from memory.services import archive_players_lock_shared

logger = logging.getLogger(__name__)

GROUP = "archivers"
BACKOFF_MAX_S = 5.0
TRIM_EVERY_S = 5.0
CLAIM_EVERY_S = 5.0
# How often a long-running archiver (run_archiver) checks that its Redis still has AOF on: a
# Redis restarted without it loses every event not yet archived on its next restart.
AOF_CHECK_EVERY_S = 60.0

OUTAGES = (RedisConnectionError, RedisTimeoutError, OperationalError, InterfaceError)

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class ArchiverStats:
    archived: int = 0  # rows inserted (duplicates not counted)
    acknowledged: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    forgotten: int = 0  # events of players forgotten after they were emitted
    outages: int = 0
    batches: int = 0
    claimed: int = 0
    last_error: str = ""


@dataclass
class ArchiveOutcome:
    """What archive_insert did with each record (indexes into its list)."""

    inserted: int = 0
    forgotten: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (index, Postgres's reason)


@dataclass
class Archiver:
    redis: Redis
    consumer: str
    stream: str = field(default_factory=lambda: settings.MEMORY_STREAM)
    dead_letter: str = field(default_factory=lambda: settings.MEMORY_STREAM + DEAD_LETTER_SUFFIX)
    batch: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_BATCH)
    block_ms: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_BLOCK_MS)
    claim_idle_ms: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_CLAIM_IDLE_MS)
    dead_letter_maxlen: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_DEAD_LETTER_MAX)
    claim_every_s: float = CLAIM_EVERY_S
    aof_check_every_s: float | None = None  # None: not checked (tests, benchmarks)
    stats: ArchiverStats = field(default_factory=ArchiverStats)
    _own_pending: bool = True  # read our own pending entries before new ones
    _claimed_at: float = 0.0
    _claim_cursor: str = "0-0"
    _trimmed_at: float = 0.0
    _aof_checked_at: float = 0.0

    def group_ensure(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop: threading.Event | None = None) -> None:
        """Archive until `stop` is set, riding out outages of Redis and Postgres."""
        stop = stop or threading.Event()
        backoff = 0.1
        group_ready = False
        while not stop.is_set():
            try:
                if not group_ready:
                    self.group_ensure()
                    group_ready = True
                self.step()
                backoff = 0.1
            except OUTAGES as exc:
                self.stats.outages += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "archiver %s: %s; retrying in %.1f s", self.consumer, self.stats.last_error, backoff
                )
                self._own_pending = True  # what we read but did not acknowledge comes back first
                group_ready = False  # a restarted Redis without its data has no group
                db_connection.close()  # Django reconnects on the next query
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def drain(self, *, max_steps: int = 10_000) -> int:
        """Step until nothing is new or pending; returns the entries handled (benchmarks, tests).

        Raises RuntimeError when entries are still pending after `max_steps` (another
        consumer's, not idle long enough to be claimed)."""
        handled = 0
        for _ in range(max_steps):
            count = self.step()
            handled += count
            if not count and not archive_backlog(self.redis)["pending"]:
                return handled
        raise RuntimeError(f"still pending after {max_steps} steps: {archive_backlog(self.redis)}")

    def step(self) -> int:
        """One batch: returns how many entries it handled."""
        entries = self._read()
        now = time.monotonic()
        # On a timer, not only when a read comes back empty: under steady traffic reads never
        # do, a dead consumer's entries would stay pending, and the trim (which stops at the
        # oldest pending entry) would let the stream grow until Redis runs out of memory.
        if now - self._claimed_at > self.claim_every_s:
            self._claimed_at = now
            claimed = self._claim()
            if len(claimed) >= self.batch:
                self._claimed_at = 0.0  # a dead consumer's backlog: claim the next batch next step
            read = {stream_id for stream_id, _ in entries}
            entries += [entry for entry in claimed if entry[0] not in read]
        if entries:
            self._archive(entries)
        if now - self._trimmed_at > TRIM_EVERY_S:
            self._trimmed_at = now
            self._trim()
        if self.aof_check_every_s is not None and now - self._aof_checked_at > self.aof_check_every_s:
            self._aof_checked_at = now
            self._aof_check()
        return len(entries)

    def _read(self) -> list[Entry]:
        if self._own_pending:
            # Id 0: this consumer's delivered-but-unacknowledged entries, without blocking.
            response = self.redis.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.batch)
            entries = _entries(response)
            if entries:
                return entries
            self._own_pending = False
        response = self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=self.batch, block=self.block_ms
        )
        return _entries(response)

    def _claim(self) -> list[Entry]:
        """Entries another consumer (a dead one) left pending too long, a batch at a time from
        where the previous claim stopped."""
        cursor, claimed, *_ = self.redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.batch,
        )
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)  # 0-0: wrapped
        entries = [(stream_id, fields) for stream_id, fields in claimed if fields is not None]
        self.stats.claimed += len(entries)
        return entries

    def _archive(self, entries: list[Entry]) -> None:
        parsed: list[tuple[Entry, MemoryEventRecord]] = []
        for entry in entries:
            try:
                parsed.append((entry, event_from_entry(entry[1])))
            except EventInvalid as exc:
                # The same entry fails the same way on every delivery: nothing to retry.
                self._dead_letter(entry, str(exc))
        with transaction.atomic():
            outcome = archive_insert([record for _, record in parsed])
            # Before the commit, while the players' locks are held: a forget that waits for them
            # finds these in the dead-letter stream when it cleans it.
            for index, reason in outcome.refused:
                self._dead_letter(parsed[index][0], reason)
        # Committed: every entry of the batch is archived, a duplicate, forgotten or dead-lettered.
        self.stats.acknowledged += self.redis.xack(
            self.stream, GROUP, *(stream_id for stream_id, _ in entries)
        )
        self.stats.archived += outcome.inserted
        self.stats.forgotten += len(outcome.forgotten)
        self.stats.duplicates += (
            len(parsed) - len(outcome.forgotten) - len(outcome.refused) - outcome.inserted
        )
        self.stats.batches += 1

    def _dead_letter(self, entry: Entry, reason: str) -> None:
        stream_id, fields = entry
        dead = {b"reason": reason.encode(), b"stream_id": stream_id, **fields}
        # Capped: a producer sending garbage must not fill Redis through this stream either.
        self.redis.xadd(self.dead_letter, dead, maxlen=self.dead_letter_maxlen, approximate=True)  # type: ignore[arg-type]
        self.stats.dead_lettered += 1
        logger.error("archiver: entry %s moved to %s: %s", stream_id.decode(), self.dead_letter, reason)

    def _trim(self) -> None:
        """Drop archived entries: everything older than the oldest pending one, or than the
        group's last delivered entry when nothing is pending."""
        summary = self.redis.xpending(self.stream, GROUP)
        if summary["pending"]:
            min_id = summary["min"]
        else:
            groups = {group["name"]: group for group in self.redis.xinfo_groups(self.stream)}
            group = groups.get(GROUP.encode()) or groups.get(GROUP)
            if group is None:
                return
            last = group["last-delivered-id"]
            min_id = _next_id(last.decode() if isinstance(last, bytes) else last)
        self.redis.xtrim(self.stream, minid=min_id, approximate=False)

    def _aof_check(self) -> None:
        """Warn (and turn AOF back on where allowed) when the event Redis lost it, e.g. after a
        restart of a Redis whose AOF was only turned on at run time."""
        try:
            redis_aof_ensure(self.redis)  # logs its own warning when AOF was off
        except AofDisabled as exc:
            logger.error("archiver %s: %s", self.consumer, exc)


def _entries(response: Any) -> list[Entry]:
    if not response:
        return []
    _, entries = response[0]
    return [(stream_id, fields) for stream_id, fields in entries if fields]


def archive_insert(records: list[MemoryEventRecord]) -> ArchiveOutcome:
    """Insert `records` in one transaction (one statement when none is refused).

    Holds each player's archive lock, shared, and drops the events of players forgotten after
    the event happened, checked inside that transaction: a forget waits for the commit, or the
    insert sees its tombstone. A record Postgres refuses (DataError, IntegrityError: the same
    refusal on every try) is found by inserting one by one, each in a savepoint, and reported
    in `refused`; the others are inserted. Other database errors (a lost connection) propagate
    and roll back the whole batch.
    """
    outcome = ArchiveOutcome()
    if not records:
        return outcome
    with transaction.atomic():
        archive_players_lock_shared(players=[record.player for record in records])
        tombstones = dict(
            ForgottenPlayer.objects.filter(player_id__in={record.player for record in records}).values_list(
                "player_id", "forgotten_at"
            )
        )
        kept = []
        for index, record in enumerate(records):
            forgotten_at = tombstones.get(record.player)
            if forgotten_at is not None and record.occurred_at <= forgotten_at:
                outcome.forgotten.append(index)
            else:
                kept.append(index)
        try:
            with transaction.atomic():  # a savepoint: a refusal leaves the transaction usable
                outcome.inserted = _insert_rows([records[index] for index in kept])
        except (DataError, IntegrityError):
            for index in kept:
                try:
                    with transaction.atomic():
                        outcome.inserted += _insert_rows([records[index]])
                except (DataError, IntegrityError) as exc:
                    reason = " ".join(str(exc).split())  # Postgres's DETAIL comes on a second line
                    outcome.refused.append((index, f"refused by Postgres: {reason}"))
    return outcome


def _insert_rows(records: list[MemoryEventRecord]) -> int:
    """One INSERT … ON CONFLICT DO NOTHING; returns how many rows were new.

    Hand-written SQL rather than bulk_create(ignore_conflicts=True): that one cannot say how
    many rows were skipped as duplicates (Django returns no ids with ignore_conflicts), and
    the conflict target is explicit here.
    """
    if not records:
        return 0
    table = MemoryEvent._meta.db_table
    columns = "event_id, kind, npc_slug, player_id, session_id, occurred_at, payload, archived_at"
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, now())"] * len(records))
    params: list[Any] = []
    for record in records:
        params += [
            record.event_id, record.kind, record.npc, record.player, record.session, record.occurred_at,
            Jsonb(record.data),
        ]  # fmt: skip
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES {rows} ON CONFLICT (event_id) DO NOTHING RETURNING 1",  # noqa: S608 - no user input in the SQL text
            params,
        )
        return len(cursor.fetchall())


def _next_id(stream_id: str) -> str:
    millis, _, sequence = stream_id.partition("-")
    return f"{millis}-{int(sequence or 0) + 1}"


def archive_backlog(redis: Redis) -> dict[str, int]:
    """What is waiting: entries in the stream, pending in the group, dead-lettered."""
    stream = settings.MEMORY_STREAM
    try:
        pending = redis.xpending(stream, GROUP)["pending"]
    except ResponseError:  # no stream or group yet
        pending = 0
    return {
        "stream": redis.xlen(stream),
        "pending": pending,
        "dead_letter": redis.xlen(stream + DEAD_LETTER_SUFFIX),
    }
