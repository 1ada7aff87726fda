"""The abstract long-job row every kind of job inherits (console.jobs)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    """A long job's state. The stored values are the ones the four job tables always used."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"  # only training jobs are cancelled today


# A job in one of these states is over: nothing runs it again, its status page stops polling.
JOB_ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
JOB_UNDER_WAY = (JobStatus.QUEUED, JobStatus.RUNNING)


class Job(models.Model):
    """A long job as a database row: what the console polls and what a worker that died
    leaves behind. Kinds add their own fields (a training job's lease, an eval's metrics)."""

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.FloatField(default=0.0, help_text="Percent done.")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of the execution running it."
    )

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    @property
    def ended(self) -> bool:
        return self.status in JOB_ENDED
