"""Training in the console: building datasets from a form, starting jobs from the list, the job
page (progress, loss plot, cancel) and approving archive turns, with the groups' permissions."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from console.jobs.models import JobStatus
from console.models import AdapterTask
from memory.models import MemoryEvent, MemoryEventKind
from tests.factories import ArchetypeFactory, BaseModelFactory, NPCFactory
from training.datasets import dataset_build
from training.models import Dataset, ExampleExchange, TrainingJob, TranscriptApproval

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _folders(settings, tmp_path):
    settings.DATASETS_DIR = tmp_path / "datasets"
    settings.ADAPTERS_DIR = tmp_path / "adapters"


@pytest.fixture
def archetype():
    archetype = ArchetypeFactory(base_model=BaseModelFactory())
    for index in range(4):
        ExampleExchange.objects.create(
            archetype=archetype, player=f"Question {index}?", reply=f"Answer {index}."
        )
    return archetype


def test_a_designer_builds_a_dataset_from_the_form_and_a_bad_one_says_why(designer_client, archetype):
    bare = ArchetypeFactory(barks={}, lexicon=[])
    add = reverse("admin:training_dataset_add")

    built = designer_client.post(add, {"archetype": archetype.pk, "task": AdapterTask.DIALOGUE_STYLE})
    refused = designer_client.post(add, {"archetype": bare.pk, "task": AdapterTask.DIALOGUE_STYLE})

    assert built.status_code == 302
    dataset = Dataset.objects.get(archetype=archetype)
    assert dataset.train_examples > 0
    assert refused.status_code == 200
    assert "only 0 examples" in refused.content.decode()
    assert not Dataset.objects.filter(archetype=bare).exists()
    page = designer_client.get(reverse("admin:training_dataset_change", args=[dataset.pk])).content.decode()
    assert "bark" in page  # where the examples come from


def test_a_designer_starts_a_job_and_follows_it_live(designer_client, archetype):
    dataset = dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)

    response = designer_client.post(
        reverse("admin:training_dataset_changelist"), {"action": "train", "_selected_action": [dataset.pk]}
    )
    job = TrainingJob.objects.get(dataset=dataset)
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, step=3, steps=10, progress=30.0, losses=[2.5, 2.1, 1.9]
    )
    page = designer_client.get(reverse("admin:training_trainingjob_change", args=[job.pk])).content.decode()
    fragment = designer_client.get(
        reverse("admin:training_trainingjob_status", args=[job.pk])
    ).content.decode()

    assert response.status_code == 302
    assert job.status == JobStatus.QUEUED
    assert '<progress max="100" value="30.0">' in page
    assert "<polyline" in page
    assert "last 1.900" in fragment
    assert 'hx-trigger="every 2s"' in fragment  # polls while running
    assert "Cancel this job" in page


def test_cancel_is_a_designers_post_and_ops_only_watch(designer_client, ops_client, archetype):
    job = TrainingJob.objects.create(
        dataset=dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE),
        base_model=archetype.base_model,
    )
    cancel = reverse("admin:training_trainingjob_cancel", args=[job.pk])

    ops_page = ops_client.get(reverse("admin:training_trainingjob_change", args=[job.pk])).content.decode()
    assert ops_client.post(cancel).status_code == 403
    assert designer_client.get(cancel).status_code == 403  # a GET never cancels
    assert designer_client.post(cancel).status_code == 302

    assert "Cancel this job" not in ops_page
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    ended = designer_client.get(reverse("admin:training_trainingjob_status", args=[job.pk])).content.decode()
    assert "hx-trigger" not in ended  # polling stops when the job ends


def test_designers_approve_archive_turns_for_training_and_ops_cannot(designer_client, ops_client, archetype):
    npc = NPCFactory(archetype=archetype)
    event = MemoryEvent.objects.create(
        event_id=uuid.uuid4(), kind=MemoryEventKind.TURN, npc_slug=npc.slug, player_id="p1",
        occurred_at=timezone.now(), payload={"player": "Hello.", "npc": "Good <b>evening</b>."},
    )  # fmt: skip
    changelist = reverse("admin:memory_memoryevent_changelist")
    form = {"action": "approve_for_training", "_selected_action": [event.pk]}

    ops_client.post(changelist, form)
    assert not TranscriptApproval.objects.exists()
    designer_client.post(changelist, form)

    approval = TranscriptApproval.objects.get()
    assert (approval.event, approval.archetype) == (event, archetype)
    listing = designer_client.get(reverse("admin:training_transcriptapproval_changelist")).content.decode()
    assert "Good &lt;b&gt;evening&lt;/b&gt;." in listing  # escaped
