"""Adapters must change only the modules workers apply LoRA to (settings.WORKER_LORA_MODULES):
the worker wraps those alone (--lora-target-modules), and an adapter's delta on any other module
would be dropped without a word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from console.models import AdapterTask
from console.services.adapters import AdapterArtifactError, adapter_import, adapter_target_modules
from inference.workers import lora_target_modules
from tests.factories import ArchetypeFactory, BaseModelFactory


def _peft_folder(root: Path, target_modules: object) -> Path:
    root.mkdir()
    config = {"r": 8, "lora_alpha": 16, "target_modules": target_modules, "peft_type": "LORA"}
    (root / "adapter_config.json").write_text(json.dumps(config))
    (root / "adapter_model.safetensors").write_bytes(b"weights")
    return root


@pytest.mark.django_db
def test_an_adapter_that_changes_the_mlp_is_refused_and_the_message_says_what_to_do(tmp_path):
    folder = _peft_folder(tmp_path / "mlp", ["q_proj", "v_proj", "gate_proj"])
    archetype = ArchetypeFactory()

    with pytest.raises(AdapterArtifactError, match="changes gate_proj.*WORKER_LORA_MODULES"):
        adapter_import(
            path=folder, archetype=archetype, task=AdapterTask.DIALOGUE_STYLE, base_model=BaseModelFactory()
        )


@pytest.mark.django_db
def test_an_adapter_on_the_attention_projections_is_imported(tmp_path):
    archetype = ArchetypeFactory()
    folder = _peft_folder(tmp_path / "attention", ["q_proj", "k_proj", "v_proj", "o_proj"])

    adapter = adapter_import(
        path=folder, archetype=archetype, task=AdapterTask.DIALOGUE_STYLE, base_model=BaseModelFactory()
    )

    assert adapter.rank == 8


def test_target_modules_are_read_from_lists_paths_and_regexes():
    assert adapter_target_modules({"target_modules": ["model.layers.0.self_attn.q_proj", "o_proj"]}) == {
        "q_proj",
        "o_proj",
    }
    assert adapter_target_modules({"target_modules": r".*\.(q_proj|v_proj)"}) == {"q_proj", "v_proj"}
    assert adapter_target_modules({"target_modules": ".*mlp.*"}) == {"gate_proj", "up_proj", "down_proj"}


def test_the_worker_wraps_vllms_fused_layers_for_peft_module_names():
    assert lora_target_modules(["q_proj", "k_proj", "v_proj", "o_proj"]) == ["o_proj", "qkv_proj"]
    assert lora_target_modules(["gate_proj", "down_proj"]) == ["down_proj", "gate_up_proj"]
