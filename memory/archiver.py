"""The archiver: memory events from the Redis Stream into Postgres, none lost, none twice.

It reads the stream through a consumer group in batches (MEMORY_ARCHIVE_BATCH entries or
MEMORY_ARCHIVE_BLOCK_MS, whichever comes first), writes each batch as one multi-row INSERT
… ON CONFLICT DO NOTHING (idempotent on event_id) and acknowledges the entries only after
the commit: a crash between the two redelivers them, and the conflict clause drops the copies.

- Its own unacknowledged entries (after a crash, a database or Redis outage) are read again
  first, from the group's pending list.
- Entries a dead consumer left pending for MEMORY_ARCHIVE_CLAIM_IDLE_MS are claimed (XAUTOCLAIM).
- An entry that cannot be archived (not a memory event, or refused by Postgres) stays pending
  and is retried; after MEMORY_ARCHIVE_MAX_DELIVERIES deliveries it moves to the dead-letter
  stream with the reason, and is acknowledged.
- Lost connections to Redis or Postgres are retried with exponential backoff.
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

from memory.events import EventInvalid, MemoryEventRecord, event_from_entry
from memory.models import ForgottenPlayer, MemoryEvent

logger = logging.getLogger(__name__)

GROUP = "archivers"
BACKOFF_MAX_S = 5.0
TRIM_EVERY_S = 5.0
CLAIM_EVERY_S = 5.0

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
    last_error: str = ""


@dataclass
class Archiver:
    redis: Redis
    consumer: str
    stream: str = field(default_factory=lambda: settings.MEMORY_STREAM)
    dead_letter: str = field(default_factory=lambda: settings.MEMORY_STREAM + ":dead")
    batch: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_BATCH)
    block_ms: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_BLOCK_MS)
    claim_idle_ms: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_CLAIM_IDLE_MS)
    max_deliveries: int = field(default_factory=lambda: settings.MEMORY_ARCHIVE_MAX_DELIVERIES)
    stats: ArchiverStats = field(default_factory=ArchiverStats)
    _own_pending: bool = True  # read our own pending entries before new ones
    _claimed_at: float = 0.0
    _trimmed_at: float = 0.0

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

        Raises RuntimeError when entries are still pending after `max_steps` (poison entries
        wait for their retries)."""
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
        if not entries and now - self._claimed_at > CLAIM_EVERY_S:
            self._claimed_at = now
            entries = self._claim()
        if entries:
            self._archive(entries)
        if now - self._trimmed_at > TRIM_EVERY_S:
            self._trimmed_at = now
            self._trim()
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
        """Entries another consumer (a dead one) left pending too long."""
        _, claimed, *_ = self.redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        return [(stream_id, fields) for stream_id, fields in claimed if fields is not None]

    def _archive(self, entries: list[Entry]) -> None:
        records: list[tuple[bytes, MemoryEventRecord]] = []
        failed: list[tuple[Entry, str]] = []
        for entry in entries:
            try:
                records.append((entry[0], event_from_entry(entry[1])))
            except EventInvalid as exc:
                failed.append((entry, str(exc)))
        records, forgotten = _without_forgotten(records)
        done: list[bytes] = list(forgotten)  # acknowledged without a row: the player was forgotten
        self.stats.forgotten += len(forgotten)
        try:
            done += self._insert(records)
        except (DataError, IntegrityError):
            # One bad event refuses the whole batch: insert one by one to find it.
            for stream_id, record in records:
                try:
                    done += self._insert([(stream_id, record)])
                except (DataError, IntegrityError) as exc:
                    failed.append(((stream_id, {}), f"refused by Postgres: {exc}".strip()))
        if done:
            self.stats.acknowledged += self.redis.xack(self.stream, GROUP, *done)
        self.stats.batches += 1
        by_id = {entry[0]: entry for entry in entries}
        for (stream_id, _), reason in failed:
            self._failed(by_id[stream_id], reason)

    def _insert(self, records: list[tuple[bytes, MemoryEventRecord]]) -> list[bytes]:
        if not records:
            return []
        inserted = archive_insert([record for _, record in records])
        self.stats.archived += inserted
        self.stats.duplicates += len(records) - inserted
        return [stream_id for stream_id, _ in records]

    def _failed(self, entry: Entry, reason: str) -> None:
        stream_id, fields = entry
        pending = self.redis.xpending_range(self.stream, GROUP, min=stream_id, max=stream_id, count=1)
        deliveries = int(pending[0]["times_delivered"]) if pending else self.max_deliveries
        if deliveries < self.max_deliveries:
            logger.warning(
                "archiver: entry %s not archived (try %d of %d): %s",
                stream_id.decode(), deliveries, self.max_deliveries, reason,
            )  # fmt: skip
            return  # stays pending; claimed again after claim_idle_ms
        dead = {b"reason": reason.encode(), b"stream_id": stream_id, **fields}
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter, dead)  # type: ignore[arg-type]
            pipe.xack(self.stream, GROUP, stream_id)
            pipe.execute()
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


def _without_forgotten(
    records: list[tuple[bytes, MemoryEventRecord]],
) -> tuple[list[tuple[bytes, MemoryEventRecord]], list[bytes]]:
    """Split off the events of players forgotten after the event happened (one query per batch)."""
    players = {record.player for _, record in records}
    tombstones = dict(
        ForgottenPlayer.objects.filter(player_id__in=players).values_list("player_id", "forgotten_at")
    )
    if not tombstones:
        return records, []
    kept, dropped = [], []
    for stream_id, record in records:
        forgotten_at = tombstones.get(record.player)
        if forgotten_at is not None and record.occurred_at <= forgotten_at:
            dropped.append(stream_id)
        else:
            kept.append((stream_id, record))
    return kept, dropped


def _entries(response: Any) -> list[Entry]:
    if not response:
        return []
    _, entries = response[0]
    return [(stream_id, fields) for stream_id, fields in entries if fields]


def archive_insert(records: list[MemoryEventRecord]) -> int:
    """Insert `records` in one statement and transaction; returns how many were new.

    Hand-written SQL rather than bulk_create(ignore_conflicts=True): that one cannot say how
    many rows were skipped as duplicates (Django returns no ids with ignore_conflicts), and
    the conflict target is explicit here.
    """
    table = MemoryEvent._meta.db_table
    columns = "event_id, kind, npc_slug, player_id, session_id, occurred_at, payload, archived_at"
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, now())"] * len(records))
    params: list[Any] = []
    for record in records:
        params += [
            record.event_id, record.kind, record.npc, record.player, record.session, record.occurred_at,
            Jsonb(record.data),
        ]  # fmt: skip
    with transaction.atomic(), db_connection.cursor() as cursor:
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
        "dead_letter": redis.xlen(stream + ":dead"),
    }
