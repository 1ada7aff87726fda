"""Adapter residency: which adapters each worker holds, kept in line with the registry.

Active adapters are loaded into their archetype's worker (rendezvous affinity, see routing)
after their files' sha256 matches the registry; adapters no longer active are unloaded.
Base-model requests need no adapter: every worker serves the base model under its own name and
under BASE_MODEL_NAME (inference.workers.worker_argv).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from django.db.models import Q

from console.jobs.models import JobStatus
from console.models import Adapter, AdapterStatus
from console.services.adapters import AdapterArtifactError, adapter_lora_name, adapter_verify
from inference.routing import worker_for_archetype
from inference.workers import worker_headers, worker_health

logger = logging.getLogger(__name__)


class AdapterLoadError(RuntimeError):
    """A worker refused to load or unload an adapter."""


@dataclass
class ResidencyReport:
    loaded: list[tuple[str, str]] = field(default_factory=list)  # (worker, lora name)
    unloaded: list[tuple[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # messages saying what to fix
    unhealthy: list[str] = field(default_factory=list)


def worker_loras(url: str, *, timeout_s: float = 5.0) -> set[str]:
    """Names of the LoRA adapters a worker serves (entries of /v1/models with a parent)."""
    response = httpx.get(f"{url}/v1/models", timeout=timeout_s, headers=worker_headers())
    response.raise_for_status()
    return {model["id"] for model in response.json()["data"] if model.get("parent")}


def adapter_load(url: str, *, lora_name: str, folder: Path, timeout_s: float = 60.0) -> None:
    response = httpx.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": lora_name, "lora_path": str(folder)},
        timeout=timeout_s,
        headers=worker_headers(),
    )
    # Loading is idempotent: two syncs (beat's and an eval's) may race to load one adapter, and a
    # name is its files' digest (adapters.adapter_lora_name), so the one loaded first is this one.
    if response.status_code == 400 and "has already been loaded" in response.text:
        return
    if response.status_code != 200:
        raise AdapterLoadError(
            f"{url} refused to load {lora_name}: {response.status_code} {response.text[:300]}"
        )


def adapter_unload(url: str, *, lora_name: str, timeout_s: float = 30.0) -> None:
    response = httpx.post(
        f"{url}/v1/unload_lora_adapter",
        json={"lora_name": lora_name},
        timeout=timeout_s,
        headers=worker_headers(),
    )
    if response.status_code == 404:  # unloaded already, by a sync that raced this one
        return
    if response.status_code != 200:
        raise AdapterLoadError(
            f"{url} refused to unload {lora_name}: {response.status_code} {response.text[:300]}"
        )


def _archetype_slug(adapter: Adapter) -> str:
    if adapter.archetype is not None:
        return adapter.archetype.slug
    if adapter.subfaction is not None:
        return adapter.subfaction.archetype.slug
    assert adapter.npc is not None  # the scope constraint guarantees one target
    return adapter.npc.archetype.slug


def residency_plan(*, healthy: Sequence[str]) -> dict[str, dict[str, Adapter]]:
    """worker -> {lora name: adapter} for every active adapter, and every candidate an eval is
    measuring: the eval loads it (training.eval.harness) and a sync between two of its requests,
    by beat or by another eval, must not take it away before the verdict."""
    plan: dict[str, dict[str, Adapter]] = {url: {} for url in healthy}
    adapters = (
        Adapter.objects.filter(Q(status=AdapterStatus.ACTIVE) | Q(eval_runs__status=JobStatus.RUNNING))
        .select_related("archetype", "subfaction__archetype", "npc__archetype")
        .distinct()
    )
    for adapter in adapters:
        owner = worker_for_archetype(_archetype_slug(adapter), healthy)
        plan[owner][adapter_lora_name(adapter)] = adapter
    return plan


def residency_sync(*, workers: Sequence[str]) -> ResidencyReport:
    """Load what each healthy worker should hold and unload what it should not."""
    report = ResidencyReport()
    healthy = []
    for url in workers:
        if worker_health(url).healthy:
            healthy.append(url)
        else:
            report.unhealthy.append(url)
    if not healthy:
        return report
    for url, planned in residency_plan(healthy=healthy).items():
        served = worker_loras(url)
        for lora_name, adapter in planned.items():
            if lora_name in served:
                continue
            try:
                folder = adapter_verify(adapter)
            except AdapterArtifactError as exc:
                logger.error("not loading %s: %s", lora_name, exc)
                report.refused.append(str(exc))
                continue
            adapter_load(url, lora_name=lora_name, folder=folder)
            report.loaded.append((url, lora_name))
        for lora_name in served - set(planned):
            adapter_unload(url, lora_name=lora_name)
            report.unloaded.append((url, lora_name))
    return report
