"""Composition with real PEFT on the bundled base model: an archetype adapter and an NPC delta
stacked exactly (cat) or approximated (svd), registered like any other adapter; the refusals,
which leave neither files nor rows; the admin action; the command and routing after activation.

Two tiny adapters (ranks 4 and 2, 2 steps) are trained once for the module: the rows are new in
every test, the files are shared."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from django.core.management import call_command
from safetensors.torch import load_file

from console.models import NPC, Adapter, AdapterScope, AdapterStatus, AdapterTask
from console.services.adapters import adapter_import, adapter_lora_name, adapter_register, adapter_verify
from inference.context import turn_context_build
from inference.workers import worker_headers
from tests.factories import ArchetypeFactory, NPCFactory, suite_base_model
from training.composition import CompositionError, adapter_compose
from training.lora import ChatExample, lora_train

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/console/adapter/"
VOICE = [ChatExample("You are a count.", "Who are you?", "The Count, my dear guest, master of nightfall.")]
QUIRK = [ChatExample("You are a count.", "Hello", "Hmm. Hmm. Hmm, a visitor, how delightful.")]
# One layer's query projection, as PEFT saves it.
Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def component_folders(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An archetype voice (rank 4, scaling 2) and an NPC quirk (rank 2, scaling 4): different
    scalings, so a composition that forgot them would not match."""
    root = tmp_path_factory.mktemp("components")
    return {
        name: lora_train(
            base_model_path=str(base_model_dir),
            examples=examples,
            output_dir=root / name,
            steps=2,
            rank=rank,
            alpha=8,
            max_tokens=32,
        )  # fmt: skip
        for name, examples, rank in (("voice", VOICE, 4), ("quirk", QUIRK, 2))
    }


@dataclass
class Lineage:
    npc: NPC
    voice: Adapter  # archetype scope
    quirk: Adapter  # the NPC's own delta


@pytest.fixture
def lineage(settings, tmp_path, base_model_dir, component_folders) -> Lineage:
    settings.ADAPTERS_DIR = tmp_path / "adapters"
    settings.WORKER_MAX_LORA_RANK = 8
    base_model = suite_base_model(base_model_dir)
    npc = NPCFactory(archetype=ArchetypeFactory(base_model=base_model))
    task = AdapterTask.DIALOGUE_STYLE
    voice = adapter_import(
        path=component_folders["voice"], archetype=npc.archetype, task=task, base_model=base_model
    )
    quirk = adapter_register(path=component_folders["quirk"], npc=npc, task=task, base_model=base_model)
    return Lineage(npc=npc, voice=voice, quirk=quirk)


@pytest.fixture
def residency_syncs(monkeypatch) -> list[str]:
    """Calls that would queue a residency sync (a Celery task: a process boundary)."""
    calls: list[str] = []
    for where in ("console.admin", "training.management.commands.compose_adapters"):
        monkeypatch.setattr(f"{where}.residency_sync_enqueue", lambda: calls.append("residency_sync"))
    return calls


def _delta(folder: Path, scaling: float) -> torch.Tensor:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    return scaling * tensors[f"{Q_PROJ}.lora_B.weight"] @ tensors[f"{Q_PROJ}.lora_A.weight"]


def _refused(settings, **kwargs) -> str:
    """Compose, expect a refusal, and check it left no row and no file behind."""
    rows = Adapter.objects.count()
    with pytest.raises(CompositionError) as refusal:
        adapter_compose(**kwargs)
    assert Adapter.objects.count() == rows
    adapters_dir = Path(settings.ADAPTERS_DIR)
    assert not adapters_dir.exists() or not any(adapters_dir.rglob("*"))
    return str(refusal.value)


def test_an_exact_composition_is_an_npc_candidate_whose_delta_is_the_weighted_sum(lineage, settings):
    composed = adapter_compose(components=[(lineage.voice, 1.0), (lineage.quirk, 0.5)])

    assert (composed.scope, composed.npc, composed.task) == (
        AdapterScope.NPC, lineage.npc, AdapterTask.DIALOGUE_STYLE,
    )  # fmt: skip
    assert (composed.status, composed.version, composed.rank, composed.alpha) == (
        AdapterStatus.CANDIDATE, lineage.quirk.version + 1, 6, 6.0,
    )  # fmt: skip
    assert composed.composition == {
        "composed_from": [
            {"adapter": lineage.voice.pk, "name": str(lineage.voice), "weight": 1.0},
            {"adapter": lineage.quirk.pk, "name": str(lineage.quirk), "weight": 0.5},
        ],
        "combination": "cat",
    }
    folder = adapter_verify(composed)
    assert folder.parent.parent.parent == Path(settings.ADAPTERS_DIR).resolve()
    assert not list(folder.parent.glob("*.partial"))
    voice = _delta(Path(lineage.voice.artifact_path), 8 / 4)
    quirk = _delta(Path(lineage.quirk.artifact_path), 8 / 2)
    composed_delta = _delta(folder, composed.alpha / composed.rank)
    assert voice.abs().max() > 1e-5  # training really changed q_proj
    assert quirk.abs().max() > 1e-5
    assert torch.allclose(composed_delta, 1.0 * voice + 0.5 * quirk, rtol=1e-5, atol=1e-8)


def test_an_svd_composition_is_the_best_approximation_at_the_rank_asked_for(lineage):
    composed = adapter_compose(components=[(lineage.voice, 1.0), (lineage.quirk, -0.5)], svd_rank=3)

    folder = adapter_verify(composed)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (composed.rank, config["r"], config["lora_alpha"]) == (3, 3, 3)
    assert (composed.scope, composed.composition["combination"]) == (AdapterScope.NPC, "svd")
    exact = _delta(Path(lineage.voice.artifact_path), 8 / 4) - 0.5 * _delta(
        Path(lineage.quirk.artifact_path), 8 / 2
    )
    u, singular, vh = torch.linalg.svd(exact.double())
    best = ((u[:, :3] * singular[:3]) @ vh[:3]).float()  # Eckart-Young: the truncated SVD
    assert torch.allclose(_delta(folder, 1.0), best, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(best, exact, rtol=1e-4, atol=1e-7)  # rank 3 really cut something


def test_adapters_of_different_tasks_are_refused(lineage, settings):
    other_task = adapter_register(
        path=Path(lineage.quirk.artifact_path), npc=lineage.npc, task=AdapterTask.ACTION_POLICY,
        base_model=lineage.quirk.base_model,
    )  # fmt: skip

    message = _refused(settings, components=[(lineage.voice, 1.0), (other_task, 1.0)])

    assert "different tasks (action_policy, dialogue_style)" in message


def test_a_sum_of_ranks_over_what_workers_serve_is_refused_with_the_svd_way_out(lineage, settings):
    settings.WORKER_MAX_LORA_RANK = 5

    message = _refused(settings, components=[(lineage.voice, 1.0), (lineage.quirk, 1.0)])

    assert "rank 6" in message
    assert "WORKER_MAX_LORA_RANK 5" in message
    assert "svd rank of at most 5" in message


def test_a_tampered_component_is_refused(lineage, settings, tmp_path):
    copy = shutil.copytree(lineage.quirk.artifact_path, tmp_path / "copy")
    tampered = adapter_register(
        path=copy, npc=lineage.npc, task=AdapterTask.DIALOGUE_STYLE, base_model=lineage.quirk.base_model
    )
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    message = _refused(settings, components=[(lineage.voice, 1.0), (tampered, 1.0)])

    assert "the folder changed after import" in message


def test_one_component_a_zero_weight_and_another_archetypes_npc_are_refused(lineage, settings):
    stranger = adapter_register(
        path=Path(lineage.quirk.artifact_path), npc=NPCFactory(archetype=ArchetypeFactory()),
        task=AdapterTask.DIALOGUE_STYLE, base_model=lineage.quirk.base_model,
    )  # fmt: skip

    alone = _refused(settings, components=[(lineage.voice, 1.0)])
    zero = _refused(settings, components=[(lineage.voice, 1.0), (lineage.quirk, 0.0)])
    foreign = _refused(settings, components=[(lineage.voice, 1.0), (stranger, 1.0)])

    assert "at least two adapters" in alone
    assert "must be a finite number other than 0" in zero
    assert "belong to different archetypes" in foreign


def test_the_admin_action_asks_for_weights_then_composes_and_links_the_result(
    lineage, settings, designer_client, ops_client, residency_syncs
):
    client = designer_client  # designers train adapters, so they compose them
    selected = {"action": "compose_adapters", "_selected_action": [lineage.voice.pk, lineage.quirk.pk]}
    weights = {f"weight_{lineage.voice.pk}": 1.0, f"weight_{lineage.quirk.pk}": 0.5}

    without_permission = ops_client.get(CHANGELIST).content.decode()
    form_page = client.post(CHANGELIST, selected).content.decode()
    settings.WORKER_MAX_LORA_RANK = 4
    refused = client.post(CHANGELIST, {**selected, **weights, "apply": "yes", "svd_rank": 6}).content.decode()
    settings.WORKER_MAX_LORA_RANK = 8
    done = client.post(CHANGELIST, {**selected, **weights, "apply": "yes"}, follow=True).content.decode()

    assert "compose_adapters" not in without_permission
    assert "csrfmiddlewaretoken" in form_page
    assert f'name="weight_{lineage.quirk.pk}" value="1.0"' in form_page
    assert 'name="apply" value="yes"' in form_page
    assert "svd rank 6 exceeds 4" in refused  # shown on the form, nothing made
    composed = Adapter.objects.get(npc=lineage.npc, composition__combination="cat")
    url = f"/admin/console/adapter/{composed.pk}/change/"
    assert f'Composed <a href="{url}">{composed}</a> (rank 6) from 2 adapters.' in done
    assert composed.composition["composed_from"][1]["weight"] == 0.5
    assert composed.status == AdapterStatus.CANDIDATE
    assert residency_syncs == []  # nothing to load: it is not active


def test_the_command_activates_a_composition_and_the_npc_turns_route_to_it(lineage, residency_syncs):
    Adapter.objects.filter(pk=lineage.voice.pk).update(status=AdapterStatus.ACTIVE)
    before = turn_context_build(npc_slug=lineage.npc.slug).routes[AdapterTask.DIALOGUE_STYLE]
    out = io.StringIO()

    call_command(
        "compose_adapters", "--adapter", f"{lineage.voice.pk}:1.0", "--adapter", f"{lineage.quirk.pk}:0.5",
        "--activate", stdout=out,
    )  # fmt: skip

    composed = Adapter.objects.get(npc=lineage.npc, status=AdapterStatus.ACTIVE)
    after = turn_context_build(npc_slug=lineage.npc.slug).routes[AdapterTask.DIALOGUE_STYLE]
    assert before == adapter_lora_name(lineage.voice)
    assert after == adapter_lora_name(composed)
    assert composed.composition["combination"] == "cat"
    assert f"Registered {composed}" in out.getvalue()
    assert residency_syncs == ["residency_sync"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_composed_adapter_is_served_by_the_worker(lineage, vllm_worker, settings):
    """vLLM loads the composition like any adapter: same base model, rank within its limit."""
    from inference.residency import residency_sync, worker_loras

    settings.INFERENCE_WORKERS = [vllm_worker.url]
    composed = adapter_compose(components=[(lineage.voice, 1.0), (lineage.quirk, 0.5)], activate=True)
    try:
        residency_sync(workers=[vllm_worker.url])
        name = adapter_lora_name(composed)
        assert name in worker_loras(vllm_worker.url)
        reply = httpx.post(
            f"{vllm_worker.url}/v1/chat/completions",
            json={
                "model": name,
                "max_tokens": 6,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Who are you?"}],
            },  # fmt: skip
            timeout=120,
            headers=worker_headers(),
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
    finally:
        Adapter.objects.filter(pk=composed.pk).update(status=AdapterStatus.RETIRED)
        residency_sync(workers=[vllm_worker.url])  # leave the worker as other tests expect
