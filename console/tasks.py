"""Celery tasks of the console (the system of record): lore ingestion."""

from __future__ import annotations

from celery import shared_task

from console.lore.ingest import ingest_job_run
from console.models import IngestJob, IngestStatus


@shared_task(acks_late=True, ignore_result=True)
def lore_ingest_task(job_id: int) -> str:
    """Run an ingestion job. Idempotent: a finished job is left alone, and a job run again
    (a worker died half-way) skips the documents it had written, as unchanged."""
    job = IngestJob.objects.select_related("world").get(pk=job_id)
    if job.status in (IngestStatus.SUCCEEDED, IngestStatus.FAILED):
        return job.status
    return ingest_job_run(job).status
