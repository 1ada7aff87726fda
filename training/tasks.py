"""Celery tasks of the training package. Training and evaluation run on the `training` queue,
served by a solo-pool worker: one job at a time, torch and peft imported inside the run."""

from __future__ import annotations

from celery import shared_task

from training.jobs import training_job_run, training_jobs_recover


# acks_late and reject_on_worker_lost: a killed worker's message comes back. The job's lease,
# not Celery, guarantees one execution (a redelivery finds the lease held and leaves).
@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def training_job_task(job_id: int) -> str:
    job = training_job_run(job_id)
    return str(job.status) if job else "missing"


@shared_task(ignore_result=True)
def training_jobs_recover_task() -> list[int]:
    """Queue again the jobs whose execution died (Celery beat, every minute)."""
    return training_jobs_recover()


@shared_task(acks_late=True, ignore_result=True)
def eval_run_task(run_id: int) -> str:
    """Evaluate a candidate against its baseline; promote it if it passes (idempotent: a run
    that already ended is left alone)."""
    from training.evaluation import eval_run_execute
    from training.models import EvalRun, EvalStatus

    run = EvalRun.objects.select_related("adapter").get(pk=run_id)
    if run.status != EvalStatus.QUEUED:
        return str(run.status)
    return str(eval_run_execute(run).status)
