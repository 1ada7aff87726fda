"""The capacity planner's arithmetic (console.views.capacity_planner): GPU memory for a served
model and the servers a world needs, with every formula written out for the page to show.

Memory of one worker (decimal GB, as GPU makers count; GiB alongside):

    weights    = parameters x bytes per weight (fp16/bf16 2, fp8/int8 1, int4 0.5)
    adapters   = resident adapters x rank x (d_in + d_out) per target x targets x layers x 2 bytes
    KV cache   = 2 (K and V) x layers x KV heads x head dim x bytes per value x context x sequences
    total      = weights + adapters + KV cache + engine overhead (activations, CUDA graphs)

A 70B model at 4 bits is 70.6e9 x 0.5 = 35.3 GB of weights (not the 21 GB the seeds wrote).

Servers for N NPCs: each tier's NPCs ask for turns at a rate and each turn generates tokens;
the demand in tokens/s is divided by what one worker measured in tokens/s (bench.multilora,
many adapters at once), rounded up. Bronze NPCs bark without the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
GIB = 2**30
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


@dataclass(frozen=True)
class ModelShape:
    name: str
    parameters: float  # count, not billions
    layers: int
    hidden: int  # model width: d_in = d_out of the attention projections
    kv_heads: int
    head_dim: int


# Shapes from the models' published configs.
PRESETS = {
    "smollm2-135m": ModelShape("SmolLM2-135M (bundled)", 134_515_008, 30, 576, 3, 64),
    "llama-3-8b": ModelShape("Llama 3 8B", 8.03e9, 32, 4096, 8, 128),
    "llama-3-70b": ModelShape("Llama 3 70B", 70.6e9, 80, 8192, 8, 128),
}


@dataclass(frozen=True)
class MemoryPlan:
    weights: float
    adapters: float
    kv_cache: float
    overhead: float
    total: float
    gpu: float
    fits: bool
    lines: list[tuple[str, str, float]]  # (part, formula with the numbers, bytes)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(part, formula, GB, GiB) for the page, the total last."""
        parts = [*self.lines, ("total", "weights + adapters + KV cache + overhead", self.total)]
        return [(part, formula, f"{size / GB:,.2f}", f"{size / GIB:,.2f}") for part, formula, size in parts]


def memory_plan(
    shape: ModelShape, *, quantization: str, adapters: int, rank: int, targets: int,
    context: int, sequences: int, kv_bytes: float, overhead_gb: float, gpu_gb: float,
) -> MemoryPlan:  # fmt: skip
    """One worker's memory, part by part, against a GPU of `gpu_gb` decimal GB."""
    per_weight = BYTES_PER_WEIGHT[quantization]
    weights = shape.parameters * per_weight
    # Each LoRA target (q, k, v, o) holds A (rank x d_in) and B (d_out x rank), in 16 bits.
    adapter_bytes = adapters * rank * (2 * shape.hidden) * targets * shape.layers * 2
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * kv_bytes * context * sequences
    overhead = overhead_gb * GB
    total = weights + adapter_bytes + kv + overhead
    lines = [
        ("weights", f"{shape.parameters:,.0f} parameters x {per_weight:g} bytes ({quantization})", weights),
        ("adapters", f"{adapters} x rank {rank} x (2 x {shape.hidden}) x {targets} targets x "
                     f"{shape.layers} layers x 2 bytes", adapter_bytes),
        ("KV cache", f"2 x {shape.layers} layers x {shape.kv_heads} KV heads x {shape.head_dim} x "
                     f"{kv_bytes:g} bytes x {context:,} tokens x {sequences} sequences", kv),
        ("engine overhead", f"{overhead_gb:g} GB (activations, CUDA graphs, allocator)", overhead),
    ]  # fmt: skip
    return MemoryPlan(
        weights=weights, adapters=adapter_bytes, kv_cache=kv, overhead=overhead, total=total,
        gpu=gpu_gb * GB, fits=total <= gpu_gb * GB, lines=lines,
    )  # fmt: skip


@dataclass(frozen=True)
class TierLoad:
    tier: str
    npcs: int
    turns_per_minute: float  # per NPC
    tokens_per_turn: int


@dataclass(frozen=True)
class ServerPlan:
    demand_tokens_s: float
    worker_tokens_s: float
    servers: int
    lines: list[tuple[str, str, float]]  # (tier, formula with the numbers, tokens/s)


def servers_needed(loads: list[TierLoad], *, worker_tokens_s: float, headroom: float = 0.7) -> ServerPlan:
    """Workers for the tiers' demand, each run at `headroom` of its measured throughput (a
    worker at 100 % has queues, and Gold turns have deadlines)."""
    if worker_tokens_s <= 0:
        raise ValueError("the measured tokens/s per worker must be positive")
    if not 0 < headroom <= 1:
        raise ValueError("headroom is a share of the worker's throughput, in (0, 1]")
    lines = []
    demand = 0.0
    for load in loads:
        rate = load.npcs * load.turns_per_minute / 60 * load.tokens_per_turn
        demand += rate
        lines.append((load.tier, f"{load.npcs} NPCs x {load.turns_per_minute:g} turns/min / 60 x "
                                 f"{load.tokens_per_turn} tokens", rate))  # fmt: skip
    servers = max(1, math.ceil(demand / (worker_tokens_s * headroom))) if demand else 0
    return ServerPlan(demand_tokens_s=demand, worker_tokens_s=worker_tokens_s, servers=servers, lines=lines)


def measured_worker_tokens_s(bench_dir: Path) -> tuple[float | None, str]:
    """The latest bench.multilora figure (many adapters on one worker): tokens/s and where it
    came from; None when the benchmark has not been run on this machine."""
    path = bench_dir / "multilora.json"
    try:
        figures: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        tokens_s = float(figures["ours"]["adapters_tokens_s"])
        # Older files lack dtype and CPU (before the dtype was chosen by the CPU).
        machine = ", ".join(str(figures[key]) for key in ("dtype", "cpu_model") if figures.get(key))
        return (
            tokens_s,
            f"bench.multilora, {figures.get('measured_at', 'undated')}, {figures['adapters']} adapters"
            + (f", {machine}" if machine else ""),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None, "not measured here yet: run `python -m bench.multilora`"
