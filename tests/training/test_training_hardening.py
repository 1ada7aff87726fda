"""Issue 17, item 12 (training's smaller holes): the cancel button is not a form nested in the
admin form; training jobs that keep losing their worker end failed; evals whose queue message
was lost are queued again, then failed; every task kind has time limits."""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.urls import reverse
from django.utils import timezone

from console.jobs.models import JobStatus
from console.models import AdapterTask
from tests.factories import AdapterFactory, ArchetypeFactory, BaseModelFactory
from training.datasets import dataset_build
from training.eval.harness import eval_runs_recover
from training.jobs import training_jobs_recover
from training.models import EvalRun, ExampleExchange, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _folders(settings, tmp_path):
    settings.DATASETS_DIR = tmp_path / "datasets"
    settings.ADAPTERS_DIR = tmp_path / "adapters"


@pytest.fixture
def queued(monkeypatch) -> list[tuple[str, int]]:
    """What the recovery sweeps send to the broker (the tasks themselves are tested elsewhere)."""
    from training import tasks

    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(tasks.training_job_task, "delay", lambda pk: sent.append(("train", pk)))
    monkeypatch.setattr(tasks.eval_run_task, "delay", lambda pk: sent.append(("eval", pk)))
    return sent


def _job(**fields) -> TrainingJob:
    archetype = ArchetypeFactory(base_model=BaseModelFactory())
    for index in range(4):
        ExampleExchange.objects.create(
            archetype=archetype, player=f"Question {index}?", reply=f"Answer {index}."
        )
    return TrainingJob.objects.create(
        dataset=dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE),
        base_model=archetype.base_model,
        **fields,
    )


class _Forms(HTMLParser):
    """Each <form> with its attributes and its depth, and each submit button's `form` attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.forms: list[dict[str, object]] = []
        self.buttons: list[dict[str, object]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "form":
            self.forms.append({**dict(attrs), "depth": self.depth})
            self.depth += 1
        elif tag in ("input", "button") and dict(attrs).get("type") == "submit":
            self.buttons.append({**dict(attrs), "depth": self.depth})

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.depth -= 1


def test_the_cancel_button_submits_its_own_form_not_the_admin_form(designer_client):
    # Given a running job, on its page
    job = _job(status=JobStatus.RUNNING)
    page = designer_client.get(reverse("admin:training_trainingjob_change", args=[job.pk])).content.decode()
    parsed = _Forms()
    parsed.feed(page)

    # Then no form is nested in another (a browser would drop the inner one), and the cancel button
    # names a form of its own whose action is the cancel view
    assert all(form["depth"] == 0 for form in parsed.forms), parsed.forms
    cancel = next(button for button in parsed.buttons if button.get("value") == "Cancel this job")
    target = next(form for form in parsed.forms if form.get("id") == cancel["form"])
    assert target["action"] == reverse("admin:training_trainingjob_cancel", args=[job.pk])
    # and posting that form (its CSRF token is inside it) cancels the job
    assert designer_client.post(target["action"]).status_code == 302
    job.refresh_from_db()
    assert job.cancel_requested


@pytest.mark.django_db(transaction=True)  # the sweep closes old connections, as beat's task does
def test_a_job_whose_worker_keeps_dying_is_failed_after_its_attempts_not_requeued_forever(queued, settings):
    # Given two running jobs whose lease lapsed: one died once, one died as often as allowed
    settings.TRAINING_MAX_ATTEMPTS = 3
    lapsed = timezone.now() - timedelta(minutes=5)
    once = _job(status=JobStatus.RUNNING, attempts=1, lease_owner="gone", lease_until=lapsed)
    killer = _job(status=JobStatus.RUNNING, attempts=3, lease_owner="gone", lease_until=lapsed)

    # When the recovery beat runs
    training_jobs_recover()

    # Then the first is resumed, the second failed with the reason, and never queued again
    killer.refresh_from_db()
    assert queued == [("train", once.pk)]
    assert killer.status == JobStatus.FAILED
    assert "died 3 times" in killer.error
    assert killer.finished_at is not None


def test_a_redelivered_message_of_an_exhausted_job_fails_it_instead_of_training(settings):
    from training.jobs import training_job_run

    settings.TRAINING_MAX_ATTEMPTS = 3
    lapsed = timezone.now() - timedelta(minutes=5)
    job = _job(status=JobStatus.RUNNING, attempts=3, lease_owner="gone", lease_until=lapsed)

    ended = training_job_run(job.pk, owner="redelivery")

    assert ended is not None
    assert (ended.status, ended.attempts) == (JobStatus.FAILED, 3)


def test_an_eval_whose_message_was_lost_is_sent_again_then_failed_when_nobody_takes_it(queued, settings):
    # Given evals queued 20 minutes ago and 7 hours ago, and one just queued
    settings.EVAL_REQUEUE_AFTER_S, settings.EVAL_QUEUED_MAX_S = 600, 6 * 3600
    lost = EvalRun.objects.create(adapter=AdapterFactory(), baseline="base")
    forgotten = EvalRun.objects.create(adapter=AdapterFactory(), baseline="base")
    fresh = EvalRun.objects.create(adapter=AdapterFactory(), baseline="base")
    EvalRun.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=20))
    EvalRun.objects.filter(pk=forgotten.pk).update(created_at=timezone.now() - timedelta(hours=7))

    # When the recovery beat runs twice in a row
    eval_runs_recover()
    eval_runs_recover()

    # Then the lost one was sent again once, the forgotten one failed saying why, the fresh one waits
    assert queued == [("eval", lost.pk)]
    lost.refresh_from_db()
    forgotten.refresh_from_db()
    fresh.refresh_from_db()
    assert (lost.status, fresh.status) == (JobStatus.QUEUED, JobStatus.QUEUED)
    assert forgotten.status == JobStatus.FAILED
    assert "training` queue" in forgotten.error


def test_every_task_kind_has_time_limits_from_the_settings(settings):
    from console.tasks import lore_ingest_task
    from memory.tasks import memory_compact_task
    from training.tasks import eval_run_task, training_job_task, training_jobs_recover_task

    assert training_job_task.soft_time_limit == settings.TRAINING_TIME_LIMIT_S
    assert (training_job_task.time_limit or 0) > settings.TRAINING_TIME_LIMIT_S
    for task in (eval_run_task, lore_ingest_task, memory_compact_task):
        assert 0 < (task.soft_time_limit or 0) < (task.time_limit or 0)
    # the short ones (beat sweeps, consolidations) get the default
    assert training_jobs_recover_task.app.conf.task_time_limit == settings.TASK_TIME_LIMIT_S + 60


def test_an_eval_past_its_time_limit_makes_no_further_request(settings):
    # The training worker's solo pool enforces no Celery time limit: the eval's generator checks
    # its deadline before each request (nothing listens on port 9: a request would fail otherwise).
    import time

    from training.eval.harness import EvalError, _Generator

    generate = _Generator("http://127.0.0.1:9", "base", deadline=time.monotonic() - 1)

    with pytest.raises(EvalError, match="EVAL_TIME_LIMIT_S"):
        generate([{"role": "user", "content": "Who are you?"}])


def test_no_job_page_nests_a_form_in_the_admin_form(designer_client):
    from console.models import IngestJob
    from training.models import ProvisionRun

    job = _job(status=JobStatus.RUNNING)
    archetype = job.dataset.archetype
    pages = [
        reverse("admin:training_trainingjob_change", args=[job.pk]),
        reverse("admin:console_archetype_change", args=[archetype.pk]),  # "Provision adapters"
        reverse(
            "admin:training_evalrun_change",
            args=[EvalRun.objects.create(adapter=AdapterFactory(archetype=archetype), baseline="base").pk],
        ),
        reverse(
            "admin:training_provisionrun_change",
            args=[ProvisionRun.objects.create(archetype=archetype, plan=[]).pk],
        ),
        reverse(
            "admin:console_ingestjob_change",
            args=[IngestJob.objects.create(world=archetype.world, source="upload:x.md").pk],
        ),
    ]
    for url in pages:
        response = designer_client.get(url)
        parsed = _Forms()
        parsed.feed(response.content.decode())
        assert response.status_code == 200, url
        assert all(form["depth"] == 0 for form in parsed.forms), (url, parsed.forms)
