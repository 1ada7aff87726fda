"""Celery tasks of the training package. Training and evaluation run on the `training` queue,
served by a solo-pool worker: one job at a time, torch and peft imported inside the run."""

from __future__ import annotations

from celery import shared_task

from console.jobs.models import JobStatus
from training.eval.harness import eval_run_claim, eval_run_execute, eval_runs_recover
from training.jobs import training_job_run, training_jobs_recover
from training.models import EvalRun
from training.provisioning import provision_advance, provision_advance_for, provision_runs_advance


# acks_late and reject_on_worker_lost: a killed worker's message comes back. The job's lease,
# not Celery, guarantees one execution (a redelivery finds the lease held and leaves).
@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def training_job_task(job_id: int) -> str:
    job = training_job_run(job_id)
    if job is not None and job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        provision_advance_for(job.dataset.archetype_id)  # a provisioning run waiting on it fails
    return str(job.status) if job else "missing"


@shared_task(ignore_result=True)
def training_jobs_recover_task() -> list[int]:
    """Queue again the training jobs and eval runs whose execution died (beat, every minute)."""

    eval_runs_recover()
    return training_jobs_recover()


@shared_task(acks_late=True, ignore_result=True)
def eval_run_task(run_id: int) -> str:
    """Evaluate a candidate against its baseline; promote it if it passes (idempotent: a run
    that already ended is left alone)."""

    if not eval_run_claim(run_id):  # ended, or another execution has it
        return str(EvalRun.objects.get(pk=run_id).status)
    run = eval_run_execute(EvalRun.objects.select_related("adapter").get(pk=run_id))
    provision_advance_for(run.adapter.archetype_id)  # a provisioning run goes on to its next task
    return str(run.status)


@shared_task(ignore_result=True)
def provision_advance_task(run_id: int) -> str:
    """One step of an archetype's provisioning run (idempotent: see training.provisioning)."""
    run = provision_advance(run_id)
    return str(run.status) if run else "missing"


@shared_task(ignore_result=True)
def provision_runs_advance_task() -> list[int]:
    """Advance every provisioning run under way (Celery beat, every minute)."""
    return provision_runs_advance()
