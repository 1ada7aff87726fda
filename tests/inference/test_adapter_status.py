"""Activating and retiring adapters: one active per target and task, artifacts checked, workers told."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from console.models import Adapter, AdapterStatus
from console.services.adapters import adapter_folder_digest, adapter_lora_name, adapter_status_set
from inference import tasks
from inference.residency import residency_plan
from tests.factories import AdapterFactory, ArchetypeFactory

pytestmark = pytest.mark.django_db


def _artifact(folder: Path, payload: bytes) -> tuple[str, str]:
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    (folder / "adapter_model.safetensors").write_bytes(payload)
    sha256, _ = adapter_folder_digest(folder)
    return str(folder), sha256


def _adapter(tmp_path: Path, name: str, **fields) -> Adapter:
    path, sha256 = _artifact(tmp_path / name, name.encode())
    adapter: Adapter = AdapterFactory(artifact_path=path, sha256=sha256, rank=8, **fields)
    return adapter


def test_activating_retires_the_active_adapter_of_the_same_archetype_and_task(tmp_path):
    archetype = ArchetypeFactory()
    old = _adapter(tmp_path, "old", archetype=archetype, status=AdapterStatus.ACTIVE)
    other_task = _adapter(
        tmp_path, "other", archetype=archetype, task="action_policy", status=AdapterStatus.ACTIVE
    )
    new = _adapter(tmp_path, "new", archetype=archetype, status=AdapterStatus.CANDIDATE)

    adapter_status_set(adapter=new, status=AdapterStatus.ACTIVE)

    old.refresh_from_db()
    other_task.refresh_from_db()
    assert (old.status, new.status, other_task.status) == ("retired", "active", "active")
    assert old.history.first().status == "retired"  # the change is in the designers' history


def test_activating_an_adapter_whose_files_changed_is_refused_and_changes_nothing(tmp_path):
    archetype = ArchetypeFactory()
    old = _adapter(tmp_path, "old", archetype=archetype, status=AdapterStatus.ACTIVE)
    new = _adapter(tmp_path, "new", archetype=archetype, status=AdapterStatus.CANDIDATE)
    (Path(new.artifact_path) / "adapter_model.safetensors").write_bytes(b"tampered")

    with pytest.raises(ValidationError, match="re-import it"):
        adapter_status_set(adapter=new, status=AdapterStatus.ACTIVE)

    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.status, new.status) == ("active", "candidate")


def test_unknown_status_names_the_allowed_ones(tmp_path):
    adapter = _adapter(tmp_path, "a")
    with pytest.raises(ValidationError, match="use one of draft, training, candidate, active, retired"):
        adapter_status_set(adapter=adapter, status="live")


@pytest.fixture
def enqueued(monkeypatch) -> list[str]:
    """Calls to the broker: the Celery task itself runs against a real worker in the e2e tests."""
    calls: list[str] = []
    monkeypatch.setattr(tasks.residency_sync_task, "delay", lambda: calls.append("residency_sync"))
    return calls


def _admin_activate(client, adapter: Adapter, capture_on_commit):
    """The admin's "Activate" action on one adapter, running what it queues on commit."""
    with capture_on_commit(execute=True):
        return client.post(
            "/admin/console/adapter/",
            {"action": "activate_adapters", "_selected_action": [adapter.pk]},
            follow=True,
        )


def test_admin_activate_action_activates_and_queues_a_residency_sync_after_commit(
    designer_client, tmp_path, enqueued, django_capture_on_commit_callbacks
):
    adapter = _adapter(tmp_path, "a", status=AdapterStatus.CANDIDATE)

    response = _admin_activate(designer_client, adapter, django_capture_on_commit_callbacks)

    adapter.refresh_from_db()
    assert adapter.status == "active"
    assert enqueued == ["residency_sync"]
    assert "workers are being updated" in response.content.decode()


def test_admin_action_reports_a_refused_activation_and_queues_nothing(
    designer_client, tmp_path, enqueued, django_capture_on_commit_callbacks
):
    adapter = _adapter(tmp_path, "a", status=AdapterStatus.CANDIDATE)
    (Path(adapter.artifact_path) / "adapter_config.json").unlink()

    response = _admin_activate(designer_client, adapter, django_capture_on_commit_callbacks)

    adapter.refresh_from_db()
    assert adapter.status == "candidate"
    assert enqueued == []
    assert "adapter_config.json is missing" in response.content.decode()


def test_workers_keep_active_adapters_and_candidates_under_evaluation_and_nothing_else():
    from console.jobs.models import JobStatus
    from training.models import EvalRun

    active = AdapterFactory(status=AdapterStatus.ACTIVE)
    measured = AdapterFactory(status=AdapterStatus.CANDIDATE)
    EvalRun.objects.create(adapter=measured, baseline="base", status=JobStatus.RUNNING)
    judged = AdapterFactory(status=AdapterStatus.CANDIDATE)
    EvalRun.objects.create(adapter=judged, baseline="base", status=JobStatus.SUCCEEDED)
    EvalRun.objects.create(adapter=judged, baseline="base", status=JobStatus.FAILED)
    AdapterFactory(status=AdapterStatus.RETIRED)

    plan = residency_plan(healthy=["http://127.0.0.1:8100"])

    assert set(plan["http://127.0.0.1:8100"]) == {adapter_lora_name(active), adapter_lora_name(measured)}


@pytest.mark.parametrize(
    ("call", "status", "text", "raises"),
    [
        ("load", 400, "The lora adapter 'a1-x' has already been loaded.", False),  # a sync raced us
        ("load", 400, "Both 'lora_name' and 'lora_path' must be provided.", True),
        ("unload", 404, "The lora adapter 'a1-x' cannot be found.", False),
        ("unload", 500, "engine died", True),
    ],
)
def test_loading_and_unloading_are_idempotent_but_other_refusals_are_errors(
    monkeypatch, call, status, text, raises
):
    import httpx

    from inference.residency import AdapterLoadError, adapter_load, adapter_unload

    monkeypatch.setattr(httpx, "post", lambda url, **_: httpx.Response(status, text=text))

    def act() -> None:
        if call == "load":
            adapter_load("http://127.0.0.1:8100", lora_name="a1-x", folder=Path("/nowhere"))
        else:
            adapter_unload("http://127.0.0.1:8100", lora_name="a1-x")

    if raises:
        with pytest.raises(AdapterLoadError, match=text[:20]):
            act()
    else:
        act()  # no error: the worker already holds (or lacks) it
