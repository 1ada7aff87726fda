"""Auto-provisioning: one click gives a new archetype its own adapters.

A ProvisionRun walks the archetype's hot-path tasks (dialogue_style, then action_policy) one
after the other, each through the same jobs a designer could start by hand: build the dataset,
train (a TrainingJob on the `training` queue), evaluate against the base model and promote
through the task's gate (an EvalRun, queued by the training job). Until a task's adapter is
promoted, the archetype's NPCs fall back to the base model with the persona prompt, as for any
task without an active adapter.

The run is a state machine over rows, advanced by `provision_advance`: it looks at the current
task's dataset, job and eval, starts whatever is missing, and moves on when the eval has ended.
It is called when the run is created, when a training job or an eval of the archetype ends,
and by beat every minute (a safety net for a lost message), and it is idempotent: the row is
locked while it decides, and a step already started is never started twice.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from console.jobs.models import JOB_ENDED, JobStatus
from console.jobs.services import job_enqueue, job_log
from console.models import AdapterTask, Archetype
from inference.base_models import base_model_for
from training.datasets import DatasetError, dataset_build, dataset_check
from training.jobs import TrainingJobError, training_job_start
from training.models import Dataset, EvalRun, ProvisionRun, TrainingJob

# The tasks a turn uses an adapter for, in the order they are provisioned (the voice first).
PROVISION_TASKS = (AdapterTask.DIALOGUE_STYLE, AdapterTask.ACTION_POLICY)
# Steps per task: the pilot's recipe (training/management/commands/train_pilot.py, about 12
# minutes for both on 2 CPU cores; far less on a GPU).
PROVISION_STEPS: dict[str, int] = {AdapterTask.DIALOGUE_STYLE: 80, AdapterTask.ACTION_POLICY: 80}
PROVISION_LEARNING_RATE: dict[str, float] = {
    AdapterTask.DIALOGUE_STYLE: 2e-3,
    AdapterTask.ACTION_POLICY: 3e-3,
}

# The task that runs it, sent by name (console.jobs.services.job_enqueue).
PROVISION_ADVANCE_TASK = "training.tasks.provision_advance_task"


class ProvisionError(Exception):
    """A provisioning run that cannot start; the message says what to fix."""


def provision_check(archetype: Archetype, tasks: tuple[str, ...] = PROVISION_TASKS) -> None:
    """Everything a run needs, checked before it starts: a base model, no run under way, and
    enough examples for every task's dataset."""
    if base_model_for(archetype) is None:
        raise ProvisionError(f"{archetype.slug} has no base model: set one on the archetype or register one")
    running = ProvisionRun.objects.filter(archetype=archetype).exclude(status__in=JOB_ENDED).first()
    if running is not None:
        raise ProvisionError(f"{archetype.slug} is being provisioned already (run {running.pk}): wait for it")
    for task in tasks:
        try:
            dataset_check(archetype=archetype, task=task)
        except DatasetError as exc:
            raise ProvisionError(str(exc)) from exc


def provision_create(
    *,
    archetype: Archetype,
    tasks: tuple[str, ...] = PROVISION_TASKS,
    steps: dict[str, int] | None = None,
    learning_rates: dict[str, float] | None = None,
    created_by: Any = None,
) -> ProvisionRun:
    """Check and create the run row (queued; `provision_start` also sends its first step)."""
    provision_check(archetype, tasks)
    plan = [
        {
            "task": task,
            "steps": (steps or PROVISION_STEPS).get(task, 80),
            "learning_rate": (learning_rates or PROVISION_LEARNING_RATE).get(task, 2e-3),
        }
        for task in tasks
    ]
    run = ProvisionRun.objects.create(archetype=archetype, plan=plan, created_by=created_by)
    job_log(ProvisionRun, run.pk, f"queued: {', '.join(tasks)} for {archetype.slug}")
    run.refresh_from_db(fields=["log"])
    return run


def provision_start(*, archetype: Archetype, **options: Any) -> ProvisionRun:
    """`provision_create`, and its first step sent once the transaction commits."""
    run = provision_create(archetype=archetype, **options)
    job_enqueue(PROVISION_ADVANCE_TASK, run.pk)
    return run


def _progress(run: ProvisionRun) -> float:
    """Each task is a share of the run; within it, training is 70 % and the eval 30 %."""
    share = 100 / max(1, len(run.plan))
    done = 0.0
    for step in run.plan:
        if step.get("outcome"):
            done += share
            continue
        job = TrainingJob.objects.filter(pk=step.get("job")).first()
        run_ = EvalRun.objects.filter(pk=step.get("eval")).first()
        done += share * (0.7 * (job.progress if job else 0) + 0.3 * (run_.progress if run_ else 0)) / 100
        break
    return round(min(done, 100.0), 1)


def provision_advance(run_id: int) -> ProvisionRun | None:
    """Move the run on as far as it can go now (see the module docstring); idempotent."""
    # The row lock makes the decision one at a time (two pokes at once would each start the
    # step's training job); it is not the claim: every poke may move a run under way along.
    notes: list[str] = []
    with transaction.atomic():
        run = ProvisionRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status in JOB_ENDED:
            return run
        if run.status == JobStatus.QUEUED:
            run.status, run.started_at = JobStatus.RUNNING, timezone.now()
        for step in run.plan:
            if step.get("outcome"):
                continue
            if not _advance_step(run, step, notes):
                break  # waiting on a job or an eval
        else:
            promoted = [step["task"] for step in run.plan if step["outcome"] == "promoted"]
            run.status, run.finished_at = JobStatus.SUCCEEDED, timezone.now()
            notes.append(
                f"done: {', '.join(promoted) or 'no task'} promoted; the others stay on the base model "
                "with the persona prompt (their eval pages say why)"
            )
        run.progress = 100.0 if run.status == JobStatus.SUCCEEDED else _progress(run)
        fields = ["status", "started_at", "finished_at", "error", "plan", "progress"]
        run.save(update_fields=fields)  # the log only through job_log, which appends
        for line in notes:
            job_log(ProvisionRun, run.pk, line)
    run.refresh_from_db(fields=["log"])
    return run


def _fail(run: ProvisionRun, step: dict[str, Any], error: str, notes: list[str]) -> bool:
    step["outcome"] = "failed"
    run.status, run.error, run.finished_at = JobStatus.FAILED, error, timezone.now()
    notes.append(f"failed at {step['task']}: {error}")
    return False


def _advance_step(run: ProvisionRun, step: dict[str, Any], notes: list[str]) -> bool:
    """Start or check one task's dataset, training and eval; True when the task is finished."""
    archetype, task = run.archetype, step["task"]
    if not step.get("dataset"):
        try:
            dataset = dataset_build(archetype=archetype, task=task)
        except DatasetError as exc:
            return _fail(run, step, str(exc), notes)
        step["dataset"] = dataset.pk
        notes.append(f"{task}: dataset {dataset} ({dataset.train_examples} examples)")
    if not step.get("job"):
        try:
            job = training_job_start(
                dataset=Dataset.objects.get(pk=step["dataset"]), steps=step["steps"],
                learning_rate=step["learning_rate"], created_by=run.created_by,
                evaluate=True,
            )  # fmt: skip
        except TrainingJobError as exc:
            return _fail(run, step, str(exc), notes)
        step["job"] = job.pk
        notes.append(f"{task}: training job {job.pk} queued ({job.steps} steps)")
        return False
    job = TrainingJob.objects.get(pk=step["job"])
    if job.status not in JOB_ENDED:
        return False
    if job.status != JobStatus.SUCCEEDED or job.adapter_id is None:
        return _fail(run, step, f"training job {job.pk} {job.status}: {job.error or 'no adapter'}", notes)
    evaluation = EvalRun.objects.filter(adapter_id=job.adapter_id).order_by("-created_at").first()
    if evaluation is None:
        return False  # the job queues it as it ends
    step["eval"] = evaluation.pk
    if evaluation.status not in JOB_ENDED:
        return False
    if evaluation.status == JobStatus.FAILED:
        return _fail(run, step, f"eval {evaluation.pk} failed: {evaluation.error}", notes)
    step["outcome"] = "promoted" if evaluation.promoted else "kept base"
    notes.append(
        f"{task}: eval {evaluation.pk} " + ("passed, adapter promoted" if evaluation.promoted else
                                           "did not pass; the NPCs keep the base model for this task")
    )  # fmt: skip
    return True


def provision_advance_for(archetype_id: int | None) -> None:
    """Queue a step of the archetype's provisioning run, if one is under way (a job of it ended)."""
    if archetype_id is None:
        return
    for run_id in ProvisionRun.objects.filter(archetype_id=archetype_id).exclude(
        status__in=JOB_ENDED
    ).values_list("pk", flat=True):  # fmt: skip
        job_enqueue(PROVISION_ADVANCE_TASK, run_id)


def provision_runs_advance() -> list[int]:
    """Advance every run under way (beat, every minute): nothing waits on a lost message."""
    advanced = []
    for run_id in ProvisionRun.objects.exclude(status__in=JOB_ENDED).values_list("pk", flat=True):
        provision_advance(run_id)
        advanced.append(run_id)
    return advanced
