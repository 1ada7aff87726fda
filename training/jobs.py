"""Training jobs: one dataset in, one candidate adapter out, exactly one execution at a time.

- **The lease.** An execution takes the job's row lease (`lease_owner`, `lease_until`) with one
  conditional UPDATE; a heartbeat thread renews it every TRAINING_HEARTBEAT_S. A second
  execution (Redis redelivers a task nobody acked within its visibility timeout, which a long
  training run outlives) finds the lease held and leaves without touching the job.
- **A killed worker.** Its lease lapses. `training_jobs_recover` (Celery beat, every minute)
  queues the job again; the next execution resumes from the last checkpoint (adapter and
  optimizer state every TRAINING_CHECKPOINT_EVERY steps), or restarts cleanly without one.
- **Cancel** sets a flag the run reads at every step; the job ends `cancelled`.
- **Progress** is the row: step, percent and the loss of every step (the job page plots it),
  a log line every 5 %, and the error when it fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import F, Q
from django.utils import timezone

from console.jobs.models import JOB_ENDED, JobStatus
from console.jobs.services import JobCancelled, JobInterrupted, job_claim, job_enqueue, job_log, job_run
from console.models import BaseModel
from console.services.adapters import AdapterArtifactError, adapter_import
from inference.base_models import base_model_for
from training.datasets import DatasetError, dataset_read, dataset_verify
from training.eval.harness import eval_run_start
from training.lora import lora_fit
from training.models import Dataset, TrainingJob

logger = logging.getLogger(__name__)
# The task that runs it, sent by name (console.jobs.services.job_enqueue).
TRAINING_JOB_TASK = "training.tasks.training_job_task"


# A queued job nobody took for this long lost its message (a broker restart without AOF).
LOST_MESSAGE_AFTER = timedelta(minutes=10)


class TrainingJobError(Exception):
    """A training job that cannot be created; the message says what to fix."""


class TrainingTimeLimit(Exception):
    """The run went past TRAINING_TIME_LIMIT_S. Checked by the run itself at every step: the
    training worker's solo pool (like the io worker's thread pool) enforces no Celery time limit."""


def execution_name() -> str:
    """Who holds a lease: host, process and thread (a solo worker runs one at a time)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _log(job_id: int, line: str, **fields: object) -> None:
    job_log(TrainingJob, job_id, line, **fields)


def _fail(job_id: int, error: str) -> None:
    _log(job_id, f"failed: {error}", status=JobStatus.FAILED, error=error, finished_at=timezone.now())


def training_job_create(
    *, dataset: Dataset, steps: int = 200, rank: int = 8, alpha: int = 16, learning_rate: float = 2e-3,
    base_model: BaseModel | None = None, created_by: object | None = None, evaluate: bool = True,
) -> TrainingJob:  # fmt: skip
    """Check the dataset and the base model and create the job row (queued, not sent: see
    `training_job_start`; `make train-pilot` runs it in the foreground)."""
    try:
        dataset_verify(dataset)
    except DatasetError as exc:
        raise TrainingJobError(str(exc)) from exc
    base_model = base_model or base_model_for(dataset.archetype)
    if base_model is None:
        raise TrainingJobError(
            f"archetype {dataset.archetype.slug} has no base model: set one on the archetype or register one"
        )
    if rank > settings.WORKER_MAX_LORA_RANK:
        raise TrainingJobError(
            f"rank {rank} is over the workers' --max-lora-rank {settings.WORKER_MAX_LORA_RANK}: "
            "train a smaller rank or raise WORKER_MAX_LORA_RANK"
        )
    job = TrainingJob(
        dataset=dataset, base_model=base_model, steps=steps, rank=rank, alpha=alpha,
        learning_rate=learning_rate, created_by=created_by, evaluate=evaluate,  # type: ignore[misc]
    )  # fmt: skip
    job.full_clean()
    job.save()
    return job


def training_job_start(*, dataset: Dataset, **options: Any) -> TrainingJob:
    """`training_job_create`, and the job sent to a training worker once the transaction commits."""
    job = training_job_create(dataset=dataset, **options)
    job_enqueue(TRAINING_JOB_TASK, job.pk)
    return job


def lease_take(job_id: int, owner: str) -> bool:
    """Take the job's lease if nobody holds it (or it lapsed): one conditional UPDATE."""
    now = timezone.now()
    return job_claim(
        TrainingJob,
        job_id,
        # Not only a queued job: a running one whose execution died (its lease lapsed) is resumed.
        when=Q(attempts__lt=settings.TRAINING_MAX_ATTEMPTS)
        & ~Q(status__in=JOB_ENDED)
        & (Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner)),
        lease_owner=owner,
        lease_until=now + timedelta(seconds=settings.TRAINING_LEASE_S),
        attempts=F("attempts") + 1,
    )


def lease_renew(job_id: int, owner: str) -> bool:
    """Extend our lease; False when another execution holds it now."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.TRAINING_LEASE_S)
    renewed = TrainingJob.objects.filter(pk=job_id, lease_owner=owner).update(
        lease_until=until, heartbeat_at=now
    )
    return renewed == 1


def lease_release(job_id: int, owner: str) -> None:
    TrainingJob.objects.filter(pk=job_id, lease_owner=owner).update(lease_owner="", lease_until=None)


class _Heartbeat(threading.Thread):
    """Renews the lease while the run trains; notes when it was lost."""

    def __init__(self, job_id: int, owner: str) -> None:
        super().__init__(name=f"training-heartbeat-{job_id}", daemon=True)
        self.job_id, self.owner = job_id, owner
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.TRAINING_HEARTBEAT_S):
                try:
                    if not lease_renew(self.job_id, self.owner):
                        self.lost.set()
                        return
                except Exception as exc:  # noqa: BLE001 - a database blip: try again next beat
                    logger.warning("training job %s: heartbeat failed: %s", self.job_id, exc)
        finally:
            connection.close()  # this thread's own connection


def checkpoint_folder(job: TrainingJob) -> Path:
    return Path(settings.ADAPTERS_DIR) / "checkpoints" / f"job-{job.pk}"


def output_folder(job: TrainingJob) -> Path:
    dataset = job.dataset
    return Path(settings.ADAPTERS_DIR) / dataset.archetype.slug / dataset.task / f"job-{job.pk}"


def training_job_run(
    job_id: int, *, owner: str | None = None, on_step: Callable[[int, int], None] | None = None
) -> TrainingJob | None:
    """Run a job to its end if this execution gets the lease; otherwise leave it alone."""
    owner = owner or execution_name()
    if not lease_take(job_id, owner):
        job = TrainingJob.objects.filter(pk=job_id).first()
        if job is None:
            logger.warning("training job %s: no such job (deleted?); nothing to run", job_id)
        elif training_job_exhausted(job):
            _fail(job_id, attempts_error(job.attempts))
            job.refresh_from_db()
        elif job.status not in JOB_ENDED:
            _log(job_id, f"execution {owner} left: the lease is held by {job.lease_owner}")
            job.refresh_from_db()
        return job
    heartbeat = _Heartbeat(job_id, owner)
    heartbeat.start()
    job = TrainingJob.objects.select_related("dataset__archetype", "base_model").get(pk=job_id)
    try:
        job_run(
            job,
            lambda job: _train(job, owner, heartbeat, on_step),
            expected=(DatasetError, AdapterArtifactError, TrainingTimeLimit),
        )
    finally:
        heartbeat.stopped.set()
        heartbeat.join(timeout=5)
        lease_release(job_id, owner)
    if job.status == JobStatus.CANCELLED:
        shutil.rmtree(checkpoint_folder(job), ignore_errors=True)
    elif job.status == JobStatus.SUCCEEDED and job.evaluate and job.adapter is not None:
        run = eval_run_start(adapter=job.adapter, created_by=job.created_by)
        _log(job.pk, f"evaluation {run.pk} queued against {run.baseline}")
        job.refresh_from_db()
    return job


def _train(
    job: TrainingJob, owner: str, heartbeat: _Heartbeat, progress: Callable[[int, int], None] | None
) -> str:
    """The work of one execution (job_run brackets it); returns the row's last line."""
    folder = dataset_verify(job.dataset)
    conversations = dataset_read(folder)
    checkpoints = checkpoint_folder(job)
    resumed = job.checkpoint_step if (checkpoints / "step").exists() else 0
    if resumed:
        _log(job.pk, f"execution {owner} resumes from the checkpoint at step {resumed}/{job.steps}",
             step=resumed, losses=job.losses[:resumed], error="")  # fmt: skip
    else:
        shutil.rmtree(checkpoints, ignore_errors=True)
        _log(job.pk, f"execution {owner} starts: {len(conversations)} examples, {job.steps} steps, "
             f"rank {job.rank}", step=0, losses=[], checkpoint_step=0, error="")  # fmt: skip
    losses = list(job.losses[:resumed]) if resumed else []
    reported = [int(100 * resumed / job.steps) // 5]
    deadline = time.monotonic() + settings.TRAINING_TIME_LIMIT_S  # per execution: a resumed run starts again

    def on_step(step: int, loss: float) -> None:
        losses.append(round(loss, 4))
        percent = round(100 * step / job.steps, 1)
        TrainingJob.objects.filter(pk=job.pk).update(step=step, progress=percent, losses=losses)
        if progress is not None:
            progress(step, job.steps)
        if int(percent) // 5 > reported[0]:
            reported[0] = int(percent) // 5
            _log(job.pk, f"{percent:.0f}% step {step}/{job.steps} loss {loss:.3f}")
        if heartbeat.lost.is_set():
            raise JobInterrupted(f"execution {owner} stopped: it lost the lease")
        if TrainingJob.objects.filter(pk=job.pk, cancel_requested=True).exists():
            raise JobCancelled("cancelled")
        if time.monotonic() > deadline:
            raise TrainingTimeLimit(
                f"stopped at step {step}/{job.steps}: the run took longer than TRAINING_TIME_LIMIT_S "
                f"({settings.TRAINING_TIME_LIMIT_S} s); train fewer steps or raise the limit"
            )

    def on_checkpoint(step: int) -> None:
        TrainingJob.objects.filter(pk=job.pk).update(checkpoint_step=step)

    output = lora_fit(
        base_model_path=job.base_model.path, conversations=conversations, output_dir=output_folder(job),
        steps=job.steps, rank=job.rank, alpha=job.alpha, learning_rate=job.learning_rate,
        checkpoint_dir=checkpoints, checkpoint_every=settings.TRAINING_CHECKPOINT_EVERY,
        on_step=on_step, on_checkpoint=on_checkpoint,
    )  # fmt: skip
    adapter = adapter_import(
        path=output, archetype=job.dataset.archetype, task=job.dataset.task, base_model=job.base_model
    )
    shutil.rmtree(checkpoints, ignore_errors=True)
    TrainingJob.objects.filter(pk=job.pk).update(adapter=adapter)
    return f"done: adapter {adapter} registered as a candidate"


def training_job_cancel(job: TrainingJob) -> TrainingJob:
    """Ask a job to stop: a queued one ends now, a running one at its next step."""
    if job.status == JobStatus.QUEUED and not job.lease_owner:
        TrainingJob.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED, cancel_requested=True, finished_at=timezone.now()
        )
    elif job.status not in JOB_ENDED:
        TrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)
        _log(job.pk, "cancel requested")
    job.refresh_from_db()
    return job


def training_job_abandon(job_id: int, reason: str) -> None:
    """End a job whose foreground run was interrupted (Ctrl-C in `make train-pilot`): cancelled,
    lease released, so the recovery beat does not resume it behind the operator's back."""
    TrainingJob.objects.filter(pk=job_id).exclude(status__in=JOB_ENDED).update(
        status=JobStatus.CANCELLED, cancel_requested=True, lease_owner="", lease_until=None,
        finished_at=timezone.now(),
    )  # fmt: skip
    _log(job_id, f"cancelled: {reason}")


def training_job_exhausted(job: TrainingJob) -> bool:
    """Whether the job used up its executions with none of them ending it (each died: a job
    that kills its worker, out of memory for one, would otherwise be resumed for ever)."""
    return (
        job.status not in JOB_ENDED
        and job.attempts >= settings.TRAINING_MAX_ATTEMPTS
        and (job.lease_until is None or job.lease_until < timezone.now())
    )


def attempts_error(attempts: int) -> str:
    return (
        f"its execution died {attempts} times without ending (TRAINING_MAX_ATTEMPTS): the training "
        "worker was probably killed, e.g. out of memory; see that worker's log, then train again "
        "with fewer steps, a smaller rank or a smaller dataset"
    )


def training_jobs_recover() -> list[int]:
    """Queue again the jobs whose execution died: running with a lapsed lease, or queued for
    long with nobody on them (a lost message). The lease makes a double queueing harmless. A
    job whose executions died TRAINING_MAX_ATTEMPTS times is failed instead."""
    # Imported here: training.tasks imports this module to run it. The sweep sends with the task's
    # own .delay at once (beat runs it outside any transaction; tests catch it at that boundary).
    from training.tasks import training_job_task

    close_old_connections()
    now = timezone.now()
    stale = TrainingJob.objects.filter(
        Q(status=JobStatus.RUNNING, lease_until__lt=now)
        | Q(status=JobStatus.QUEUED, lease_until__isnull=True, created_at__lt=now - timedelta(minutes=10))
    ).values_list("pk", "checkpoint_step", "attempts")
    recovered = []
    for pk, step, attempts in stale:
        if attempts >= settings.TRAINING_MAX_ATTEMPTS:
            _fail(pk, attempts_error(attempts))
            continue
        _log(pk, f"its execution stopped answering; queued again (checkpoint at step {step})")
        training_job_task.delay(pk)
        recovered.append(pk)
    return recovered
