"""Training jobs in-process, with real PEFT training on the bundled base model: the lease, a
tiny run to a candidate adapter, resuming exactly from a checkpoint after the lease is lost,
cancel, and tampered datasets."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from console.jobs.models import JobStatus
from console.models import AdapterStatus, AdapterTask
from console.services.adapters import adapter_verify
from tests.factories import ArchetypeFactory, suite_base_model
from training.datasets import dataset_build
from training.jobs import (
    TrainingJobError,
    checkpoint_folder,
    lease_renew,
    lease_take,
    training_job_abandon,
    training_job_cancel,
    training_job_create,
    training_job_run,
    training_jobs_recover,
)
from training.lora import lr_factor
from training.models import ExampleExchange, TrainingJob

EXCHANGES = [
    ("Who are you?", "I am the Count, and the night is mine, my dear guest."),
    ("What do you want?", "Only your company, my dear guest, and perhaps a little of your warmth."),
    ("Where am I?", "In my castle, my dear guest, where nightfall never ends."),
    ("Can I leave?", "Of course, my dear guest. Nobody has wished to, in three hundred years."),
]


@pytest.fixture
def dataset(settings, tmp_path, base_model_dir):
    """A small dialogue dataset of an archetype on the bundled base model."""
    settings.DATASETS_DIR = tmp_path / "datasets"
    settings.ADAPTERS_DIR = tmp_path / "adapters"
    base_model = suite_base_model(base_model_dir)
    archetype = ArchetypeFactory(base_model=base_model)
    for player, reply in EXCHANGES:
        ExampleExchange.objects.create(archetype=archetype, player=player, reply=reply)
    return dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)


def _job(dataset, steps: int = 4) -> TrainingJob:
    return training_job_create(dataset=dataset, steps=steps, rank=4, alpha=8, learning_rate=5e-3)


@pytest.mark.django_db
def test_one_execution_holds_the_lease_until_it_lapses(dataset):
    job = _job(dataset)

    assert lease_take(job.pk, "first")
    assert not lease_take(job.pk, "redelivered")
    assert lease_renew(job.pk, "first")
    TrainingJob.objects.filter(pk=job.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert lease_take(job.pk, "after-a-crash")
    assert not lease_renew(job.pk, "first")  # the old execution learns it lost the job
    job.refresh_from_db()
    assert (job.status, job.attempts, job.lease_owner) == (JobStatus.RUNNING, 2, "after-a-crash")


@pytest.mark.django_db
def test_a_second_execution_leaves_a_held_job_alone(dataset):
    job = _job(dataset)
    lease_take(job.pk, "the-running-one")

    left = training_job_run(job.pk, owner="redelivered")

    assert left is not None
    assert (left.status, left.step, left.attempts) == (JobStatus.RUNNING, 0, 1)
    assert "redelivered left: the lease is held by the-running-one" in left.log


@pytest.mark.django_db(transaction=True)  # the heartbeat thread needs committed rows
def test_a_tiny_run_records_progress_and_registers_a_candidate_adapter(dataset, settings):
    settings.TRAINING_CHECKPOINT_EVERY = 2
    job = _job(dataset, steps=4)

    done = training_job_run(job.pk)

    assert done is not None
    assert done.status == JobStatus.SUCCEEDED, done.log
    assert (done.step, done.progress, len(done.losses), done.attempts) == (4, 100.0, 4, 1)
    assert all(loss > 0 for loss in done.losses)
    assert done.adapter is not None
    assert done.adapter.status == AdapterStatus.CANDIDATE
    assert (done.adapter.task, done.adapter.rank) == (AdapterTask.DIALOGUE_STYLE, 4)
    assert (adapter_verify(done.adapter) / "adapter_config.json").exists()
    assert not checkpoint_folder(done).exists()  # cleaned up
    assert "100% step 4/4" in done.log
    assert done.lease_owner == ""


@pytest.mark.django_db(transaction=True)
def test_a_run_that_lost_its_lease_is_resumed_from_its_checkpoint_exactly(dataset, settings):
    settings.TRAINING_CHECKPOINT_EVERY = 2
    settings.TRAINING_HEARTBEAT_S = 0.2
    straight = training_job_run(_job(dataset, steps=6).pk)
    job = _job(dataset, steps=6)

    def steal_after_the_checkpoint() -> None:
        """Another execution takes the lease once step 3 is done (as after a stall)."""
        try:
            while not TrainingJob.objects.filter(pk=job.pk, step__gte=3).exists():
                time.sleep(0.05)
            TrainingJob.objects.filter(pk=job.pk).update(lease_owner="thief")
        finally:
            connection.close()

    thief = threading.Thread(target=steal_after_the_checkpoint)
    thief.start()
    stopped = training_job_run(job.pk, owner="first")
    thief.join()

    assert stopped is not None
    assert stopped.status == JobStatus.RUNNING
    assert "first stopped: it lost the lease" in stopped.log
    assert stopped.checkpoint_step in (2, 4)
    TrainingJob.objects.filter(pk=job.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert training_jobs_recover() == [job.pk]  # what Celery beat does every minute
    resumed = training_job_run(job.pk, owner="second")

    assert resumed is not None
    assert resumed.status == JobStatus.SUCCEEDED, resumed.log
    assert f"second resumes from the checkpoint at step {stopped.checkpoint_step}/6" in resumed.log
    assert resumed.attempts == 2
    assert straight is not None
    assert resumed.losses == pytest.approx(straight.losses, abs=2e-3)  # the same run, interrupted


@pytest.mark.django_db(transaction=True)  # the heartbeat thread needs committed rows
def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_step(dataset):
    queued = training_job_cancel(_job(dataset))
    running = _job(dataset)
    TrainingJob.objects.filter(pk=running.pk).update(cancel_requested=True)

    stopped = training_job_run(running.pk)

    assert queued.status == JobStatus.CANCELLED
    assert stopped is not None
    assert (stopped.status, stopped.step, stopped.adapter) == (JobStatus.CANCELLED, 1, None)
    assert not checkpoint_folder(stopped).exists()


@pytest.mark.django_db(transaction=True)  # the heartbeat thread needs committed rows
def test_a_tampered_dataset_is_refused_before_and_during_training(dataset):
    job = _job(dataset)
    (Path(dataset.path) / "train.jsonl").write_text('{"messages": [], "source": "smuggled"}\n')

    with pytest.raises(TrainingJobError, match="does not match its manifest"):
        training_job_create(dataset=dataset)
    failed = training_job_run(job.pk)

    assert failed is not None
    assert failed.status == JobStatus.FAILED
    assert "train.jsonl does not match its manifest" in failed.error
    assert failed.adapter is None


@pytest.mark.django_db
def test_a_rank_over_the_workers_limit_is_refused(dataset, settings):
    with pytest.raises(TrainingJobError, match="over the workers' --max-lora-rank"):
        training_job_create(dataset=dataset, rank=settings.WORKER_MAX_LORA_RANK * 2)


def test_the_learning_rate_warms_up_then_decays_to_zero_as_a_function_of_the_step():
    factors = [lr_factor(step, 20) for step in range(20)]

    assert factors[:3] == [0.5, 1.0, 1.0]  # two warm-up steps (10 %), then the peak
    assert all(later < earlier for earlier, later in zip(factors[2:], factors[3:], strict=False))
    assert factors[-1] == pytest.approx(1 / 18)  # never zero: the last step still learns


@pytest.mark.django_db(transaction=True)  # training_jobs_recover closes stale connections
def test_an_abandoned_foreground_job_is_cancelled_and_never_resumed(dataset):
    job = _job(dataset)
    assert lease_take(job.pk, "pilot-process")
    TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)

    training_job_abandon(job.pk, "make train-pilot was interrupted")

    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.lease_until) == (JobStatus.CANCELLED, "", None)
    assert "cancelled: make train-pilot was interrupted" in job.log
    TrainingJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert training_jobs_recover() == []


@pytest.mark.django_db(transaction=True)  # the heartbeat thread needs committed rows
def test_a_run_past_its_time_limit_fails_saying_so(dataset, settings):
    # The training worker's solo pool enforces no Celery time limit: the run checks its own.
    settings.TRAINING_TIME_LIMIT_S = 0

    job = training_job_run(_job(dataset, steps=4).pk)

    assert job is not None
    assert (job.status, job.step, job.adapter) == (JobStatus.FAILED, 1, None)
    assert "TRAINING_TIME_LIMIT_S" in job.error
