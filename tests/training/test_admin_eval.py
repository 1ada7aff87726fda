"""Evaluations in the console: the eval page (candidate and baseline side by side, the gate, the
verdict, samples escaped, followed live), the adapters list's Evaluate and Roll back actions with
the groups' permissions, and the adapter page's link to its latest evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.urls import reverse

from console.jobs.models import JobStatus
from console.models import Adapter, AdapterStatus, AdapterTask
from console.services.adapters import adapter_folder_digest
from tests.factories import AdapterFactory, ArchetypeFactory
from training.models import EvalRun

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/console/adapter/"


@pytest.fixture(autouse=True)
def _folders(settings, tmp_path):
    settings.DATASETS_DIR = tmp_path / "datasets"
    settings.ADAPTERS_DIR = tmp_path / "adapters"


@pytest.fixture
def residency_syncs(monkeypatch) -> list[str]:
    """Calls that would queue a residency sync (a Celery task: a process boundary)."""
    calls: list[str] = []
    monkeypatch.setattr("console.admin.residency_sync_enqueue", lambda: calls.append("residency_sync"))
    return calls


def _with_artifact(adapter: Adapter, folder: Path) -> Adapter:
    """Real adapter files, so activation (which verifies them) accepts the adapter."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(f"weights {adapter.version}".encode())
    adapter.artifact_path, (adapter.sha256, adapter.size_bytes) = str(folder), adapter_folder_digest(folder)
    adapter.save()
    return adapter


def _finished_run(**fields) -> EvalRun:
    if "adapter" not in fields:
        fields["adapter"] = AdapterFactory(task=AdapterTask.ACTION_POLICY, status=AdapterStatus.CANDIDATE)
    defaults = {
        "baseline": "base",
        "status": JobStatus.SUCCEEDED,
        "progress": 100.0,
        "candidate_metrics": {"action_validity": 0.97, "action_accuracy": 0.6},
        "baseline_metrics": {"action_validity": 0.41, "action_accuracy": 0.2},
        "gate": {"action_validity": 0.95},
        "passed": True,
        "reasons": ["action_validity 0.97 >= 0.95 and > base 0.41"],
        "promoted": True,
        "samples": [
            {
                "part": "choices",
                "prompt": "<script>alert('player')</script>",
                "candidate": "attack",
                "baseline": "I <b>think</b> talk",
            }
        ],
    }
    return EvalRun.objects.create(**{**defaults, **fields})


def test_the_eval_page_shows_both_sides_the_gate_the_verdict_and_escaped_samples(designer_client):
    run = _finished_run()

    page = designer_client.get(reverse("admin:training_evalrun_change", args=[run.pk])).content.decode()

    assert "baseline (base)" in page
    assert "0.970" in page  # the candidate
    assert "0.410" in page  # the baseline
    assert '<tr class="gate-met">' in page  # action_validity, gated at 0.95
    assert "action_validity 0.97 &gt;= 0.95 and &gt; base 0.41" in page  # the reasons
    assert "Verdict: passed — promoted" in page
    assert "&lt;script&gt;alert(&#x27;player&#x27;)&lt;/script&gt;" in page
    assert "<script>alert(" not in page
    assert "I &lt;b&gt;think&lt;/b&gt; talk" in page


def test_a_row_below_the_baseline_is_marked_missed_even_above_the_minimum(designer_client):
    run = _finished_run(
        candidate_metrics={"lore_accuracy": 0.92},
        baseline_metrics={"lore_accuracy": 0.99},  # beyond the non-inferiority margin
        gate={"lore_accuracy": 0.9},
        passed=False,
        promoted=False,
        reasons=["lore_accuracy 0.92 >= 0.90 but < base 0.99 - 0.05"],
    )

    page = designer_client.get(reverse("admin:training_evalrun_change", args=[run.pk])).content.decode()

    assert '<tr class="gate-missed">' in page
    assert '<tr class="gate-met">' not in page
    assert "Verdict: did not pass" in page


def test_the_status_fragment_polls_while_the_run_goes_on_and_stops_when_it_ends(designer_client, ops_client):
    run = _finished_run(
        status=JobStatus.RUNNING, progress=40.0, candidate_metrics={}, baseline_metrics={},
        passed=None, promoted=False, reasons=[], samples=[],
    )  # fmt: skip
    status = reverse("admin:training_evalrun_status", args=[run.pk])

    running = ops_client.get(status).content.decode()  # ops watch
    EvalRun.objects.filter(pk=run.pk).update(status=JobStatus.FAILED, error="no inference worker answers")
    ended = designer_client.get(status).content.decode()

    assert 'hx-trigger="every 2s"' in running
    assert '<progress max="100" value="40.0">' in running
    assert "Not measured yet. Gate: action_validity ≥ 0.95" in running
    assert "Verdict: not judged yet" in running
    assert "hx-trigger" not in ended
    assert "no inference worker answers" in ended
    assert "Verdict: failed before a verdict" in ended


def test_the_status_fragment_needs_the_view_permission(client, django_user_model):
    run = _finished_run()
    stranger = django_user_model.objects.create_user("stranger", password="x", is_staff=True)
    client.force_login(stranger)

    response = client.get(reverse("admin:training_evalrun_status", args=[run.pk]))

    assert response.status_code == 403


def test_a_designer_evaluates_an_adapter_against_the_base_model_and_the_task_waits_for_commit(
    designer_client, django_capture_on_commit_callbacks
):
    adapter = AdapterFactory(task=AdapterTask.ACTION_POLICY, status=AdapterStatus.CANDIDATE)
    form = {"action": "evaluate_adapters", "_selected_action": [adapter.pk]}

    with django_capture_on_commit_callbacks() as queued:  # captured, not run: no broker is called
        response = designer_client.post(CHANGELIST, form, follow=True)

    run = EvalRun.objects.get(adapter=adapter)
    assert (run.baseline, run.status, run.gate) == ("base", JobStatus.QUEUED, {"action_validity": 0.95})
    assert len(queued) == 1
    page = response.content.decode()
    assert "1 evaluation(s) queued" in page
    assert f'href="{reverse("admin:training_evalrun_change", args=[run.pk])}"' in page


def test_an_adapter_already_being_evaluated_is_not_queued_twice(designer_client):
    run = _finished_run(status=JobStatus.RUNNING, passed=None, promoted=False)

    response = designer_client.post(
        CHANGELIST, {"action": "evaluate_adapters", "_selected_action": [run.adapter.pk]}, follow=True
    )

    assert EvalRun.objects.filter(adapter=run.adapter).count() == 1
    assert "an evaluation is already under way" in response.content.decode()


def test_ops_can_neither_evaluate_nor_roll_back(ops_client, residency_syncs):
    adapter = AdapterFactory(status=AdapterStatus.ACTIVE)

    listing = ops_client.get(CHANGELIST).content.decode()
    ops_client.post(CHANGELIST, {"action": "evaluate_adapters", "_selected_action": [adapter.pk]})
    ops_client.post(CHANGELIST, {"action": "rollback_adapters", "_selected_action": [adapter.pk]})

    assert "evaluate_adapters" not in listing
    assert "rollback_adapters" not in listing
    assert not EvalRun.objects.exists()
    assert residency_syncs == []


def test_rolling_back_reactivates_the_retired_earlier_version_and_tells_the_workers(
    designer_client, tmp_path, residency_syncs
):
    archetype = ArchetypeFactory()
    old = _with_artifact(
        AdapterFactory(archetype=archetype, version=1, status=AdapterStatus.RETIRED), tmp_path / "v1"
    )
    new = _with_artifact(
        AdapterFactory(archetype=archetype, version=2, status=AdapterStatus.ACTIVE), tmp_path / "v2"
    )

    response = designer_client.post(
        CHANGELIST, {"action": "rollback_adapters", "_selected_action": [new.pk]}, follow=True
    )
    refused = designer_client.post(
        CHANGELIST, {"action": "rollback_adapters", "_selected_action": [old.pk]}, follow=True
    )

    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.status, new.status) == (AdapterStatus.ACTIVE, AdapterStatus.RETIRED)
    assert "Active again" in response.content.decode()
    assert "no earlier dialogue_style adapter to roll back to" in refused.content.decode()
    assert residency_syncs == ["residency_sync"]  # once, for the rollback that happened


def test_the_adapter_page_links_to_its_latest_evaluation(designer_client):
    adapter = AdapterFactory(task=AdapterTask.ACTION_POLICY)
    never = designer_client.get(reverse("admin:console_adapter_change", args=[adapter.pk])).content.decode()
    _finished_run(adapter=adapter, passed=False, promoted=False)
    latest = _finished_run(adapter=adapter)

    page = designer_client.get(reverse("admin:console_adapter_change", args=[adapter.pk])).content.decode()

    assert "never evaluated" in never
    assert f'href="{reverse("admin:training_evalrun_change", args=[latest.pk])}"' in page
    assert f"eval {latest.pk} against base: passed — promoted" in page
