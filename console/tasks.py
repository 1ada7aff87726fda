"""Celery tasks of the console (the system of record): lore ingestion."""

from __future__ import annotations

from celery import shared_task

from console.lore.ingest import ingest_job_claim, ingest_job_run
from console.models import IngestJob


@shared_task(acks_late=True, ignore_result=True)
def lore_ingest_task(job_id: int) -> str:
    """Run an ingestion job. Idempotent: an ended job, or one another execution is running, is
    left alone; a job whose worker died half-way is taken again and skips the documents it had
    written, as unchanged."""
    if not ingest_job_claim(job_id):
        return str(IngestJob.objects.get(pk=job_id).status)
    return str(ingest_job_run(IngestJob.objects.select_related("world").get(pk=job_id)).status)
