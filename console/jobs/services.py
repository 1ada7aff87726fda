"""Writing a long job's row: the one log writer, the one claim, the runner, the enqueue."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from celery import current_app
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from console.jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

J = TypeVar("J", bound=Job)


class JobCancelled(Exception):
    """Raised by a job's work when it was asked to stop: the job ends `cancelled`."""


class JobInterrupted(Exception):
    """Raised by a job's work when this execution must stop but the job is not over (another
    execution holds it now): the message is logged and the status left as it is."""


def job_log(model: type[Job], pk: int, line: str, /, **fields: Any) -> None:
    """Append a stamped line to a job's log (and set `fields`) in one UPDATE.

    Never read-modify-write: a heartbeat thread, a recovery sweep and the run itself may write
    to the same row at once, and `log = log || line` in SQL loses none of their lines (a
    `job.log += line; job.save()` keeps only the last writer's copy)."""
    stamp = timezone.now().strftime("%H:%M:%S")
    model._default_manager.filter(pk=pk).update(log=Concat(F("log"), Value(f"{stamp} {line}\n")), **fields)
    logger.info("%s %s: %s", model._meta.verbose_name, pk, line)


def job_claim(model: type[Job], pk: int, *, when: Q | None = None, **fields: Any) -> bool:
    """Take a job for one execution: one conditional UPDATE, so of two deliveries of the same
    task exactly one gets True. By default only a queued job is taken; `when` widens that (a
    training job whose lease lapsed), `fields` are set along with the claim (the lease)."""
    now = timezone.now()
    taken = (
        model._default_manager.filter(Q(pk=pk) & (when if when is not None else Q(status=JobStatus.QUEUED)))
        .update(
            status=JobStatus.RUNNING,
            started_at=Coalesce(F("started_at"), Value(now)),
            heartbeat_at=now,
            **fields,
        )
    )  # fmt: skip
    return taken == 1


def job_run(
    job: J,
    work: Callable[[J], str | None],
    *,
    started: str | None = None,
    expected: tuple[type[Exception], ...] = (),
) -> J:
    """Run one execution of `job` and bracket it on the row (NetBox's JobRunner.handle):

    - start: `running`, started_at (kept from an earlier execution), a heartbeat, no error, and
      the `started` line;
    - `work(job)` returns: `succeeded` at 100 % with the line it returned (or "done");
    - it raises JobCancelled: `cancelled`; JobInterrupted: the line only, the row left to the
      execution that holds it now;
    - any other exception: `failed` with its message as the error. Exceptions in `expected`
      are the job's own refusals (a bad file): no traceback in the worker's log for those.

    The caller's instance is refreshed from the row and returned."""
    model, pk = type(job), job.pk
    now = timezone.now()
    start = {"status": JobStatus.RUNNING, "started_at": Coalesce(F("started_at"), Value(now)),
             "heartbeat_at": now, "error": ""}  # fmt: skip
    if started is None:
        model._default_manager.filter(pk=pk).update(**start)
    else:
        job_log(model, pk, started, **start)
    try:
        done = work(job)
    except JobCancelled as exc:
        job_log(model, pk, str(exc) or "cancelled", status=JobStatus.CANCELLED, finished_at=timezone.now())
    except JobInterrupted as exc:
        job_log(model, pk, str(exc) or "interrupted")
    except Exception as exc:  # noqa: BLE001 - the row says why, whatever it was
        if not isinstance(exc, expected):
            logger.exception("%s %s failed", model._meta.verbose_name, pk)
        # A database error would otherwise leave the job `running` for good: the task is acked
        # and nothing looks at the row again. A broken connection is replaced before the write
        # (not inside a caller's transaction: that one is the caller's to end).
        if not connection.in_atomic_block:
            close_old_connections()
        error = str(exc) or repr(exc)
        job_log(
            model, pk, f"failed: {error}", status=JobStatus.FAILED, error=error, finished_at=timezone.now()
        )
    else:
        job_log(
            model, pk, done or "done", status=JobStatus.SUCCEEDED, progress=100.0, finished_at=timezone.now()
        )
    job.refresh_from_db()
    return job


def job_enqueue(task_name: str, pk: int) -> None:
    """Send the task registered as `task_name` with `pk` once the transaction commits (at once
    outside one): a worker that took the message before the commit would find no row, or a
    stale one (Celery's `delay_on_commit`, by name).

    By name: a `*_start` service sends the task that runs its job without importing the tasks
    module, which imports the service to run the job (the names are checked against the
    registry in tests/console/test_jobs.py)."""
    transaction.on_commit(partial(current_app.send_task, task_name, args=[pk]))
