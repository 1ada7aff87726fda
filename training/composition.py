"""Composition: an archetype adapter stacked with subfaction and NPC deltas, served as one adapter.

A worker serves one LoRA per request, so an NPC that should speak with its archetype's voice,
its clan's manner and its own quirks needs those deltas in a single adapter. PEFT's
`add_weighted_adapter` makes it:

- `cat` (the default) is exact: the composed A stacks weight_i * scaling_i * A_i and B stacks
  the B_i side by side, so the composed delta is sum_i weight_i * scaling_i * B_i A_i, at rank
  sum_i r_i (scaling 1: PEFT sets alpha = r).
- `svd` with `svd_rank` approximates that sum by its best rank-`svd_rank` factorisation (the
  truncated SVD), for components whose ranks add up to more than the workers serve.

PEFT's own `combination_type="svd"` is not used: it takes a dense SVD of every out x in delta,
measured here at 0.6 s per 576 x 576 projection (70 s for the 135M test model, under load); a
4096-wide model would take hours. The delta is known to have rank at most sum_i r_i, so
`_svd_truncate` takes the same truncated SVD from the exact `cat` factors: a QR of each factor
and an SVD of a small (sum_i r_i)-square core, milliseconds per layer.

The result is registered like any other adapter (a candidate, versioned per target and task,
with its sha256), with its components in `Adapter.composition`. Registered with NPC or
subfaction scope and made active, routing picks it for that NPC's turns (inference/routing.py).
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from console.models import NPC, Adapter, AdapterScope, Archetype, Subfaction
from console.models.adapters import MAX_ADAPTER_RANK
from console.services.adapters import AdapterArtifactError, adapter_register, adapter_verify

# The name of the composed adapter inside the PEFT model, and of the subfolder PEFT saves it in.
COMPOSED = "composed"


class CompositionError(Exception):
    """Adapters that cannot be composed; the message says what to fix."""


@dataclass(frozen=True)
class CompositionPlan:
    """What `adapter_compose_check` accepted: the checked components and where the result goes."""

    components: list[tuple[Adapter, float]]
    folders: list[Path]
    archetype: Archetype
    subfaction: Subfaction | None
    npc: NPC | None
    combination: str
    rank: int


def _lineage(adapter: Adapter) -> tuple[Archetype, Subfaction | None, NPC | None]:
    """The archetype an adapter belongs to, and its subfaction or NPC when it is scoped to one."""
    if adapter.scope == AdapterScope.NPC and adapter.npc is not None:
        return adapter.npc.archetype, None, adapter.npc
    if adapter.scope == AdapterScope.SUBFACTION and adapter.subfaction is not None:
        return adapter.subfaction.archetype, adapter.subfaction, None
    if adapter.archetype is None:
        raise CompositionError(f"adapter {adapter.pk} has no target: fix its scope first")
    return adapter.archetype, None, None


def adapter_compose_check(
    *,
    components: list[tuple[Adapter, float]],
    scope_npc: NPC | None = None,
    scope_subfaction: Subfaction | None = None,
    svd_rank: int | None = None,
) -> CompositionPlan:
    """May these adapters be composed, and into what? Reads files, writes nothing."""
    if len(components) < 2:
        raise CompositionError(
            "composition needs at least two adapters: select an archetype adapter and a delta"
        )
    adapters = [adapter for adapter, _ in components]
    if len({adapter.pk for adapter in adapters}) != len(adapters):
        raise CompositionError("an adapter appears twice: give each one once, with the sum of its weights")
    for adapter, weight in components:
        if not math.isfinite(weight) or weight == 0:
            raise CompositionError(f"{adapter}: weight {weight} must be a finite number other than 0")
    if len({adapter.task for adapter in adapters}) != 1:
        tasks = ", ".join(sorted({str(adapter.task) for adapter in adapters}))
        raise CompositionError(f"the adapters serve different tasks ({tasks}): compose adapters of one task")
    if len({adapter.base_model_id for adapter in adapters}) != 1:
        raise CompositionError(
            "the adapters were trained on different base models: compose adapters of one base model"
        )
    if scope_npc is not None and scope_subfaction is not None:
        raise CompositionError("give the composed adapter one target: an NPC or a subfaction, not both")

    lineages = [_lineage(adapter) for adapter in adapters]
    archetypes = {archetype.pk: archetype for archetype, _, _ in lineages}
    subfactions = {subfaction.pk: subfaction for _, subfaction, _ in lineages if subfaction is not None}
    npcs = {npc.pk: npc for _, _, npc in lineages if npc is not None}
    if len(archetypes) != 1:
        names = ", ".join(sorted(archetype.slug for archetype in archetypes.values()))
        raise CompositionError(f"the adapters belong to different archetypes ({names}): compose one lineage")
    archetype = next(iter(archetypes.values()))
    if len(subfactions) > 1 or len(npcs) > 1:
        raise CompositionError(
            "the adapters target more than one subfaction or NPC: "
            "compose at most one of each with their archetype"
        )
    subfaction = next(iter(subfactions.values()), None)
    npc = next(iter(npcs.values()), None)
    if npc is not None and subfaction is not None and npc.subfaction_id != subfaction.pk:
        raise CompositionError(
            f"NPC {npc.slug} is not in subfaction {subfaction.slug}: compose the NPC's own subfaction"
        )

    # The target: the most specific component's, unless the caller names a more specific one.
    if scope_npc is not None:
        if npc is not None and scope_npc.pk != npc.pk:
            raise CompositionError(
                f"the NPC delta is NPC {npc.slug}'s: compose it for {npc.slug}, not {scope_npc.slug}"
            )
        if scope_npc.archetype_id != archetype.pk:
            raise CompositionError(f"NPC {scope_npc.slug} is not of archetype {archetype.slug}")
        if subfaction is not None and scope_npc.subfaction_id != subfaction.pk:
            raise CompositionError(f"NPC {scope_npc.slug} is not in subfaction {subfaction.slug}")
        npc = scope_npc
    elif scope_subfaction is not None:
        if npc is not None:
            raise CompositionError(
                f"an NPC delta ({npc.slug}) belongs in an NPC-scoped adapter: compose for that NPC"
            )
        if subfaction is not None and scope_subfaction.pk != subfaction.pk:
            raise CompositionError(
                f"the subfaction delta is {subfaction.slug}'s, not {scope_subfaction.slug}'s"
            )
        if scope_subfaction.archetype_id != archetype.pk:
            raise CompositionError(f"subfaction {scope_subfaction.slug} is not of archetype {archetype.slug}")
        subfaction = scope_subfaction

    combination = "svd" if svd_rank is not None else "cat"
    exact_rank = sum(adapter.rank for adapter in adapters)
    rank = svd_rank if svd_rank is not None else exact_rank
    if rank > exact_rank:
        raise CompositionError(
            f"svd rank {rank} is more than the exact composition's rank {exact_rank}: "
            "leave the svd rank empty for the exact sum"
        )
    limit = min(MAX_ADAPTER_RANK, settings.WORKER_MAX_LORA_RANK)
    if rank < 1:
        raise CompositionError(f"svd rank {rank} must be at least 1")
    if rank > limit:
        if combination == "svd":
            raise CompositionError(
                f"svd rank {rank} exceeds {limit}, the most a worker serves (WORKER_MAX_LORA_RANK "
                f"{settings.WORKER_MAX_LORA_RANK}, at most {MAX_ADAPTER_RANK}): choose a smaller svd rank"
            )
        raise CompositionError(
            f"the exact composition has rank {rank} (the sum of the components' ranks), more than "
            f"the {limit} a worker serves (WORKER_MAX_LORA_RANK {settings.WORKER_MAX_LORA_RANK}, "
            f"at most {MAX_ADAPTER_RANK}): give an svd rank of at most {limit} to approximate it"
        )

    folders = []
    for adapter in adapters:
        try:
            folder = adapter_verify(adapter)
        except AdapterArtifactError as exc:
            raise CompositionError(f"{exc}; compose only adapters whose files verify") from exc
        config = json.loads((folder / "adapter_config.json").read_text())
        # PEFT gives the composed adapter the first component's config: an rsLoRA scaling
        # (alpha / sqrt(r)) would no longer be 1, and DoRA magnitudes do not add up.
        if config.get("use_rslora") or config.get("use_dora"):
            raise CompositionError(f"{adapter}: rsLoRA and DoRA adapters cannot be composed exactly")
        folders.append(folder)
    return CompositionPlan(
        components=components, folders=folders, archetype=archetype, subfaction=subfaction, npc=npc,
        combination=combination, rank=rank,
    )  # fmt: skip


def _composed_folder(plan: CompositionPlan) -> Path:
    """A fresh folder next to the archetype's other adapters; the random part keeps retries apart."""
    target = plan.npc or plan.subfaction or plan.archetype
    scope = "npc" if plan.npc else "subfaction" if plan.subfaction else "archetype"
    task = plan.components[0][0].task
    name = f"composed-{scope}-{target.slug}-{uuid.uuid4().hex[:8]}"
    return Path(settings.ADAPTERS_DIR) / plan.archetype.slug / task / name


def _compose_files(plan: CompositionPlan, staging: Path) -> Path:
    """Build the composed adapter with PEFT and save it alone; return the folder PEFT wrote."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = plan.components[0][0].base_model
    # float32 on CPU: composing is a few matrix products per layer, and bfloat16 would round
    # the exact `cat` sum away.
    model = AutoModelForCausalLM.from_pretrained(base_model.path, dtype=torch.float32)
    names = [f"c{index}" for index in range(len(plan.folders))]
    peft_model = PeftModel.from_pretrained(model, str(plan.folders[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], plan.folders[1:], strict=True):
        peft_model.load_adapter(str(folder), adapter_name=name)
    weights = [float(weight) for _, weight in plan.components]
    peft_model.add_weighted_adapter(names, weights, adapter_name=COMPOSED, combination_type="cat")
    peft_model.save_pretrained(str(staging), selected_adapters=[COMPOSED])
    # PEFT saves an adapter not named "default" in a subfolder of that name.
    written = staging / COMPOSED
    if plan.combination == "svd":
        _svd_truncate(written, rank=plan.rank)
    return written


# PEFT's names for the two factors of a LoRA delta (delta = B @ A), linear and embedding layers.
FACTOR_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B"))


def _truncated_factors(b: Any, a: Any, rank: int) -> tuple[Any, Any]:
    """B', A' with B' A' the best rank-`rank` approximation of B A (B: out x k, A: k x in).

    B A = Qb Rb (Qa Ra)^T = Qb (Rb Ra^T) Qa^T, and Rb Ra^T = U S V^T is only k x k, so
    B A = (Qb U) S (Qa V)^T is its SVD; keep the top `rank` (B' = Qb U S, A' = V^T Qa^T, as PEFT's
    svd lays them out). float64 inside: the core's small singular values are the ones cut.
    """
    import torch

    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, singular, vh = torch.linalg.svd(rb @ ra.T)
    new_b = (qb @ u[:, :rank]) * singular[:rank]
    new_a = vh[:rank] @ qa.T
    return new_b.to(b.dtype).contiguous(), new_a.to(a.dtype).contiguous()


def _svd_truncate(folder: Path, *, rank: int) -> None:
    """Rewrite the exact composed adapter in `folder` at rank `rank` (alpha = rank: scaling 1)."""
    from safetensors.torch import load_file, save_file

    weights_path = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights_path))
    for a_suffix, b_suffix in FACTOR_PAIRS:
        for a_key in [key for key in tensors if key.endswith(a_suffix)]:
            b_key = a_key.removesuffix(a_suffix) + b_suffix
            if tensors[a_key].dim() != 2:
                raise CompositionError(f"{a_key}: only linear and embedding LoRA layers can be compressed")
            tensors[b_key], tensors[a_key] = _truncated_factors(tensors[b_key], tensors[a_key], rank)
    save_file(tensors, str(weights_path), metadata={"format": "pt"})
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(r=rank, lora_alpha=rank, rank_pattern={}, alpha_pattern={})
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def adapter_compose(
    *,
    components: list[tuple[Adapter, float]],
    scope_npc: NPC | None = None,
    scope_subfaction: Subfaction | None = None,
    svd_rank: int | None = None,
    activate: bool = False,
) -> Adapter:
    """Compose adapters (weight each) into one and register it as a candidate (active if asked).

    The files are written to a staging folder and renamed into place whole before the row is
    registered, so no row ever points at a half-written adapter; on any failure the files go.
    Callers queue `inference.tasks.residency_sync_enqueue` when `activate` is set.
    """
    plan = adapter_compose_check(
        components=components, scope_npc=scope_npc, scope_subfaction=scope_subfaction, svd_rank=svd_rank
    )
    final = _composed_folder(plan)
    staging = final.with_name(final.name + ".partial")
    first = plan.components[0][0]
    composition: dict[str, Any] = {
        "composed_from": [
            {"adapter": adapter.pk, "name": str(adapter), "weight": weight}
            for adapter, weight in plan.components
        ],
        "combination": plan.combination,
    }
    try:
        written = _compose_files(plan, staging)
        written.rename(final)  # same parent folder: atomic
        shutil.rmtree(staging)
        # Activation verifies the files again and retires the target's active adapter; a
        # refusal there rolls the registration back with it.
        adapter = adapter_register(
            path=final, task=first.task, base_model=first.base_model,
            archetype=None if (plan.npc or plan.subfaction) else plan.archetype,
            subfaction=None if plan.npc else plan.subfaction, npc=plan.npc, composition=composition,
            activate=activate,
        )  # fmt: skip
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # renamed but not registered: nothing refers to it
        if isinstance(exc, AdapterArtifactError):
            raise CompositionError(str(exc)) from exc
        if isinstance(exc, ValidationError):
            raise CompositionError(" ".join(exc.messages)) from exc
        raise
    return adapter
