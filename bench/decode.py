"""Single-stream decode speed next to this machine's memory-bandwidth ceiling.

    python -m bench.decode [--tokens 128] [--runs 3]

Starts its own vLLM worker (the same argv and environment as `make run`) on a free port, then
streams greedy replies of exactly --tokens tokens and measures the time between tokens:
through the base model, as every task without an adapter runs, and through a random rank-8
LoRA adapter (the trainer's layout), as a trained voice runs. Decoding one token reads every
weight once, so the ceiling is bandwidth / model bytes. WORKER_DTYPE and the VLLM_CPU_*
variables in the environment reach the worker, as with `make run`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings.test")
django.setup()

import numpy as np  # noqa: E402 - after django.setup(), like every module that reads settings

from bench.multilora import random_adapters  # noqa: E402
from console.localstack import free_port  # noqa: E402
from inference.base_models import (  # noqa: E402
    bundled_gguf_path,
    default_model_dir,
    gguf_convert,
    safetensors_parameter_count,
)
from inference.engine import EngineClient  # noqa: E402
from inference.residency import adapter_load  # noqa: E402
from inference.workers import WorkerProcess, cpu_flags, cpu_model, worker_argv  # noqa: E402

SERVED = "bench-base"
MESSAGES = [
    {"role": "system", "content": "You are Count Valerian, an ancient vampire noble. Stay in character."},
    {"role": "user", "content": "Tell me the long history of your castle."},
]
BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "float16": 2}


def memory_read_bandwidth(*, size_mb: int = 512, repeats: int = 5) -> float:
    """Bytes per second a full-array reduction reads (best of `repeats`): the decode-like access."""
    data = np.ones(size_mb * 1024 * 1024 // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best


async def inter_token_ms(
    url: str, *, model: str, tokens: int, runs: int, client: type[EngineClient] = EngineClient
) -> tuple[float, float]:
    """(median ms between streamed tokens, median time to first token in ms) over `runs`.

    `client`: another server's dialect of the same API (bench.anchor's llama-server client)."""
    engine = client(url, timeout_s=600)
    gaps: list[float] = []
    ttfts: list[float] = []
    try:
        for run in range(runs + 1):  # the first run warms caches and is not counted
            stamps = []
            started = time.perf_counter()
            async for _ in engine.stream_chat(
                model=model, messages=MESSAGES, max_tokens=tokens, temperature=0.0, ignore_eos=True
            ):
                stamps.append(time.perf_counter())
            if run == 0 or len(stamps) < 2:
                continue
            ttfts.append((stamps[0] - started) * 1000)
            gaps.append((stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1))
    finally:
        await engine.close()
    return statistics.median(gaps), statistics.median(ttfts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    model_dir = gguf_convert(gguf_path=bundled_gguf_path(), target_dir=default_model_dir())
    url = f"http://127.0.0.1:{free_port()}"
    argv = worker_argv(model_path=str(model_dir), served_name=SERVED, url=url)
    dtype = argv[argv.index("--dtype") + 1]
    bandwidth = memory_read_bandwidth()
    parameters = safetensors_parameter_count(model_dir)
    model_bytes = parameters * BYTES_PER_WEIGHT.get(dtype, 4)
    ceiling = bandwidth / model_bytes

    with tempfile.TemporaryDirectory() as tmp:
        worker = WorkerProcess(
            url=url, base_model_dir=model_dir, log_path=Path(tmp) / "worker.log", served_name=SERVED
        )
        worker.start()
        try:
            (adapter,) = random_adapters(model_dir=model_dir, root=Path(tmp), count=1, rank=8)
            adapter_load(url, lora_name="bench-adapter", folder=adapter)
            base_ms, base_ttft = asyncio.run(
                inter_token_ms(url, model=SERVED, tokens=args.tokens, runs=args.runs)
            )
            zero_ms, zero_ttft = asyncio.run(
                inter_token_ms(url, model="bench-adapter", tokens=args.tokens, runs=args.runs)
            )
        finally:
            worker.stop()

    base_tps, zero_tps = 1000 / base_ms, 1000 / zero_ms
    print(
        json.dumps(
            {
                "bench": "decode",
                "dtype": dtype,
                "parameters": parameters,
                "model_bytes": model_bytes,
                "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                "ceiling_tokens_s": round(ceiling, 1),
                "base_ms_per_token": round(base_ms, 2),
                "base_tokens_s": round(base_tps, 1),
                "base_ratio_to_ceiling": round(base_tps / ceiling, 3),
                "base_ttft_ms": round(base_ttft, 1),
                "adapter_ms_per_token": round(zero_ms, 2),
                "adapter_tokens_s": round(zero_tps, 1),
                "adapter_ratio_to_ceiling": round(zero_tps / ceiling, 3),
                "adapter_ttft_ms": round(zero_ttft, 1),
                "plugin": os.environ.get("REVENANT_VLLM_PLUGIN", "on"),
                "cpu_env": {key: value for key, value in os.environ.items() if key.startswith("VLLM_CPU_")},
                "cpu_model": cpu_model(),
                "tokens": args.tokens,
                "runs": args.runs,
                "cpu_flags": sorted(cpu_flags()),
            }
        )
    )


if __name__ == "__main__":
    main()
