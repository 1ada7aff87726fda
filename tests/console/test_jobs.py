"""The long-job framework (console.jobs): one log writer that loses no line, one claim that
gives a job to one execution, a runner that ends every execution in a status, and the status
fragment every kind's page polls."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection
from django.urls import reverse

from console.jobs.models import Job, JobStatus
from console.jobs.services import JobCancelled, JobInterrupted, job_claim, job_log, job_run
from console.models import AdapterTask, IngestJob
from tests.factories import AdapterFactory, ArchetypeFactory, BaseModelFactory, WorldFactory
from training.datasets import dataset_build
from training.models import EvalRun, ExampleExchange, ProvisionRun, TrainingJob

WRITERS, LINES = 4, 50


def _append(job: IngestJob, line: str) -> None:
    """What each writer calls with the job it loaded: the framework's log writer."""
    job_log(IngestJob, job.pk, line)


def _in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(index)` in `count` threads that start together, each on its own database
    connection (closed at the end), as a run, its heartbeat and a recovery sweep do."""
    start = threading.Barrier(count)
    results: list[object] = [None] * count

    def thread(index: int) -> None:
        try:
            start.wait()
            results[index] = work(index)
        finally:
            connection.close()

    threads = [threading.Thread(target=thread, args=(index,)) for index in range(count)]
    for each in threads:
        each.start()
    for each in threads:
        each.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)  # each thread commits on its own connection
def test_two_writers_appending_to_one_jobs_log_lose_no_line():
    # Given a job, and writers that each loaded it (the run holds its row; a sweep loads its own)
    job = IngestJob.objects.create(world=WorldFactory(), source="upload:race.md")

    # When they append to its log at the same time
    def write(writer: int) -> None:
        mine = IngestJob.objects.get(pk=job.pk)
        for line in range(LINES):
            _append(mine, f"writer {writer} line {line}")

    _in_threads(WRITERS, write)

    # Then every line of every writer is in the log, once
    job.refresh_from_db()
    lines = [line.split(" ", 1)[1] for line in job.log.splitlines()]
    expected = {f"writer {writer} line {line}" for writer in range(WRITERS) for line in range(LINES)}
    assert len(lines) == WRITERS * LINES, f"{WRITERS * LINES - len(lines)} lines lost"
    assert set(lines) == expected


@pytest.mark.django_db(transaction=True)
def test_a_job_claimed_by_several_executions_at_once_is_taken_by_one():
    # Given a queued job, delivered to several executions at once
    job = IngestJob.objects.create(world=WorldFactory(), source="upload:claim.md")

    # When each tries to claim it, then one tries again
    taken = _in_threads(WRITERS, lambda _index: job_claim(IngestJob, job.pk))
    again = job_claim(IngestJob, job.pk)

    # Then exactly one got it, and it is running since then
    assert taken.count(True) == 1
    assert again is False
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    assert job.started_at is not None
    assert job.heartbeat_at is not None


@pytest.mark.django_db
def test_the_runner_maps_an_exception_to_a_failed_row_with_its_message():
    job = IngestJob.objects.create(world=WorldFactory(), source="upload:flood.md")

    def work(job: IngestJob) -> str:
        job_log(IngestJob, job.pk, "half-way", progress=50.0)
        raise RuntimeError("the moor flooded the archive")

    ran = job_run(job, work, started="started on the moor")

    assert ran is job  # the caller's instance, refreshed
    assert job.status == JobStatus.FAILED
    assert job.error == "the moor flooded the archive"
    assert job.finished_at is not None
    assert job.started_at is not None
    assert job.progress == 50.0
    assert [line.split(" ", 1)[1] for line in job.log.splitlines()] == [
        "started on the moor",
        "half-way",
        "failed: the moor flooded the archive",
    ]


@pytest.mark.django_db
def test_the_runner_ends_a_job_succeeded_cancelled_or_leaves_it_to_its_holder():
    world = WorldFactory()
    done, cancelled, interrupted = (IngestJob.objects.create(world=world, source=name) for name in "abc")

    def cancel(job: Job) -> None:
        raise JobCancelled("cancelled by a designer")

    def interrupt(job: Job) -> None:
        raise JobInterrupted("execution x stopped: it lost the lease")

    job_run(done, lambda job: "done: 3 documents")
    job_run(cancelled, cancel)
    job_run(interrupted, interrupt)

    assert (done.status, done.progress, done.error) == (JobStatus.SUCCEEDED, 100.0, "")
    assert done.log.endswith("done: 3 documents\n")
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert interrupted.status == JobStatus.RUNNING
    assert interrupted.finished_at is None
    assert "it lost the lease" in interrupted.log


def _ingest_job() -> Job:
    return IngestJob.objects.create(world=WorldFactory(), source="upload:page.md")


def _training_job() -> Job:
    archetype = ArchetypeFactory(base_model=BaseModelFactory())
    for index in range(4):
        ExampleExchange.objects.create(
            archetype=archetype, player=f"Question {index}?", reply=f"Answer {index}."
        )
    dataset = dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)
    return TrainingJob.objects.create(dataset=dataset, base_model=archetype.base_model)


def _eval_run() -> Job:
    return EvalRun.objects.create(adapter=AdapterFactory(), baseline="base")


def _provision_run() -> Job:
    return ProvisionRun.objects.create(archetype=ArchetypeFactory(), plan=[{"task": "dialogue_style"}])


@pytest.mark.django_db
@pytest.mark.parametrize("make", [_ingest_job, _training_job, _eval_run, _provision_run])
def test_each_kinds_status_fragment_shows_progress_and_log_and_polls_until_the_job_ends(
    designer_client, settings, tmp_path, make
):
    settings.DATASETS_DIR = tmp_path / "datasets"
    # Given a job under way with progress and a log line
    job = make()
    job_log(type(job), job.pk, "73% the red testament: created", status=JobStatus.RUNNING, progress=73.0)
    opts = job._meta
    status = reverse(f"admin:{opts.app_label}_{opts.model_name}_status", args=[job.pk])

    # When its page and its fragment are read, before and after it ends
    page = designer_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[job.pk]))
    running = designer_client.get(status).content.decode()
    job_log(
        type(job),
        job.pk,
        "failed: the lantern went out",
        status=JobStatus.FAILED,
        error="the lantern went out",
    )
    ended = designer_client.get(status).content.decode()

    # Then both show the percent and the log; the fragment polls only while the job runs
    assert page.status_code == 200
    for html in (page.content.decode(), running):
        assert 'value="73.0"' in html
        assert "73%" in html
        assert "the red testament: created" in html
        assert f'hx-get="{status}"' in html
    assert 'class="errornote">the lantern went out' in ended
    assert "hx-get" not in ended


def test_the_tasks_the_start_services_send_by_name_exist():
    # The *_start services send their job's task by name (console.jobs.services.job_enqueue):
    # a renamed task would be sent to nobody.
    from console import tasks as console_tasks
    from console.lore.ingest import LORE_INGEST_TASK
    from training import tasks as training_tasks
    from training.eval.harness import EVAL_RUN_TASK
    from training.jobs import TRAINING_JOB_TASK
    from training.provisioning import PROVISION_ADVANCE_TASK

    registered = {
        task.name
        for task in (
            console_tasks.lore_ingest_task,
            training_tasks.training_job_task,
            training_tasks.eval_run_task,
            training_tasks.provision_advance_task,
        )
    }

    assert {LORE_INGEST_TASK, TRAINING_JOB_TASK, EVAL_RUN_TASK, PROVISION_ADVANCE_TASK} == registered
