"""Auto-provisioning: the checks before a run starts, the state machine over real dataset,
training-job and eval rows (the jobs' outcomes are written here as their workers would;
tests/training/test_training_e2e.py runs the whole chain through real workers), and the
archetype page's button."""

from __future__ import annotations

import pytest
from django.urls import reverse

from console.jobs.models import JobStatus
from console.models import AdapterStatus, AdapterTask
from tests.factories import AdapterFactory, ArchetypeFactory, NPCFactory, suite_base_model
from training.models import EvalRun, ExampleExchange, ProvisionRun, TrainingJob
from training.provisioning import ProvisionError, provision_advance, provision_create, provision_runs_advance

pytestmark = pytest.mark.django_db

ACTIONS = [
    {"name": "idle", "description": "Stand still."},
    {"name": "wail", "description": "Let out a keening wail."},
]


@pytest.fixture
def banshee(settings, tmp_path, base_model_dir):
    settings.DATASETS_DIR = tmp_path / "datasets"
    archetype = ArchetypeFactory(
        slug="banshee", base_model=suite_base_model(base_model_dir), allowed_actions=ACTIONS,
        barks={"greet": ["Ohhh... who walks the moor?", "Listen... the dead are calling."]},
    )  # fmt: skip
    NPCFactory(archetype=archetype)
    for index in range(8):
        ExampleExchange.objects.create(
            archetype=archetype, player=f"Who are you {index}?", reply=f"I mourn {index}."
        )
    return archetype


def _finish_job(job_id: int, *, status: str = JobStatus.SUCCEEDED) -> TrainingJob:
    job = TrainingJob.objects.get(pk=job_id)
    adapter = None
    if status == JobStatus.SUCCEEDED:
        adapter = AdapterFactory(archetype=job.dataset.archetype, task=job.dataset.task)
    TrainingJob.objects.filter(pk=job_id).update(status=status, adapter=adapter, progress=100, error="boom")
    return TrainingJob.objects.get(pk=job_id)


def test_a_run_walks_each_task_through_dataset_training_and_eval(banshee, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        run = provision_create(archetype=banshee, steps={AdapterTask.DIALOGUE_STYLE: 3})
    assert queued == []  # provision_create sends nothing: the test advances it

    run = provision_advance(run.pk)
    assert run.status == JobStatus.RUNNING
    first = run.plan[0]
    assert first["task"] == AdapterTask.DIALOGUE_STYLE
    assert first["dataset"]
    assert first["job"]
    job = TrainingJob.objects.get(pk=first["job"])
    assert (job.steps, job.evaluate, job.status) == (3, True, JobStatus.QUEUED)
    assert "eval" not in first
    assert "job" not in run.plan[1]

    assert provision_advance(run.pk).plan == run.plan  # nothing to do while the job runs: no second job
    assert TrainingJob.objects.count() == 1

    job = _finish_job(job.pk)
    run = provision_advance(run.pk)
    assert "outcome" not in run.plan[0]  # the job queues its eval; until it exists, wait
    evaluation = EvalRun.objects.create(adapter=job.adapter, baseline="base", status=JobStatus.SUCCEEDED,
                                        passed=True, promoted=True)  # fmt: skip
    run = provision_advance(run.pk)
    assert run.plan[0]["outcome"] == "promoted"
    assert run.plan[0]["eval"] == evaluation.pk
    assert run.plan[1]["job"]  # the next task started
    assert 0 < run.progress < 100

    action_job = _finish_job(run.plan[1]["job"])
    EvalRun.objects.create(
        adapter=action_job.adapter, baseline="base", status=JobStatus.SUCCEEDED, passed=False
    )
    run = provision_advance(run.pk)

    assert run.status == JobStatus.SUCCEEDED
    assert run.progress == 100
    assert run.plan[1]["outcome"] == "kept base"
    assert "dialogue_style promoted" in run.log
    assert provision_advance(run.pk).log == run.log  # an ended run is left alone


def test_a_failed_training_job_fails_the_run_with_its_error(banshee):
    run = provision_advance(provision_create(archetype=banshee).pk)

    _finish_job(run.plan[0]["job"], status=JobStatus.FAILED)
    assert provision_runs_advance() == [run.pk]  # beat's safety net advances it too

    run.refresh_from_db()
    assert run.status == JobStatus.FAILED
    assert "training job" in run.error
    assert "boom" in run.error
    assert "job" not in run.plan[1]


def test_a_run_needs_a_base_model_examples_and_no_other_run_under_way(banshee):
    bare = ArchetypeFactory(base_model=banshee.base_model)  # no examples, barks or actions

    with pytest.raises(ProvisionError, match="examples"):
        provision_create(archetype=bare)
    provision_create(archetype=banshee)
    with pytest.raises(ProvisionError, match="being provisioned already"):
        provision_create(archetype=banshee)
    assert ProvisionRun.objects.count() == 1
    assert not TrainingJob.objects.exists()


def test_the_archetype_page_has_the_button_and_it_starts_a_run(banshee, designer_client, ops_client):
    page = designer_client.get(reverse("admin:console_archetype_change", args=[banshee.pk]))
    assert b"Provision adapters" in page.content
    assert (
        b"Provision adapters"
        not in ops_client.get(reverse("admin:console_archetype_change", args=[banshee.pk])).content
    )
    start = reverse("admin:training_provisionrun_start", args=[banshee.pk])
    assert ops_client.post(start).status_code == 403
    assert designer_client.get(start).status_code == 403  # POST only

    response = designer_client.post(start)

    run = ProvisionRun.objects.get(archetype=banshee)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:training_provisionrun_change", args=[run.pk])
    page = designer_client.get(response["Location"])
    assert page.status_code == 200
    assert b"dialogue_style" in page.content
    assert b"action_policy" in page.content
    status = designer_client.get(reverse("admin:training_provisionrun_status", args=[run.pk]))
    assert b'hx-trigger="every 2s"' in status.content  # polls until it ends
    again = designer_client.post(start, follow=True)
    assert b"being provisioned already" in again.content


def test_until_an_adapter_is_promoted_the_npcs_fall_back_to_the_base_model(banshee):
    from inference.context import turn_context_build

    npc = banshee.npcs.first()
    before = turn_context_build(npc_slug=npc.slug)
    AdapterFactory(archetype=banshee, task=AdapterTask.DIALOGUE_STYLE, status=AdapterStatus.ACTIVE)
    after = turn_context_build(npc_slug=npc.slug)

    assert before.routes[AdapterTask.DIALOGUE_STYLE] == "base"
    assert AdapterTask.DIALOGUE_STYLE in before.missing_adapters
    assert after.routes[AdapterTask.DIALOGUE_STYLE] != "base"
