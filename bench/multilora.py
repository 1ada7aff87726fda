"""Many adapters versus the base model alone, on one vLLM worker: the multi-LoRA tax.

    python -m bench.multilora [--streams 16] [--tokens 64] [--adapters 8] [--rounds 2]

The same load (--streams concurrent greedy streams of exactly --tokens tokens) runs through
the base model alone, then spread over --adapters distinct LoRA adapters, on the same worker;
the ratio of their aggregate output tokens/s is the tax. Two workers run one after the other,
in one process, so their figures are side by side:

- raw: vLLM's LoRA as it comes: without our plugin (inference.vllm_plugin, which groups tokens
  by adapter and skips rows without one) and with `--max-lora-rank` at its default (16);
- ours: the worker `make run` starts (`worker_argv`, the plugin on), whose `--max-lora-rank` is
  sized to the adapters the trainer makes (WORKER_MAX_LORA_RANK, 8).

Both run in the dtype `make run` picks for this CPU (inference.workers.worker_dtype). Rounds
alternate base and adapter loads so machine noise falls on both; figures are medians over
rounds. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings.test")
django.setup()

from django.conf import settings  # noqa: E402 - after django.setup(), like every module that reads settings
from django.test import override_settings  # noqa: E402

from console.localstack import free_port  # noqa: E402
from inference.base_models import bundled_gguf_path, default_model_dir, gguf_convert  # noqa: E402
from inference.engine import EngineClient  # noqa: E402
from inference.residency import adapter_load  # noqa: E402
from inference.workers import WorkerProcess, cpu_model, worker_dtype  # noqa: E402
from training.lora import lora_random  # noqa: E402

SERVED = "bench-base"
VLLM_DEFAULT_MAX_LORA_RANK = 16


def random_adapters(*, model_dir: Path, root: Path, count: int, rank: int) -> list[Path]:
    """`count` adapters with random weights, like trained ones in size (training.lora.lora_random):
    throughput does not depend on what the weights say, and training eight would take minutes."""
    return [
        lora_random(
            base_model_path=str(model_dir), output_dir=root / f"adapter-{index}", rank=rank, seed=index
        )
        for index in range(count)
    ]


@dataclass
class LoadFigures:
    tokens_s: float
    ttft_ms: list[float]


async def load_run(
    url: str, *, models: list[str], tokens: int, client: type[EngineClient] = EngineClient
) -> LoadFigures:
    """All streams at once, as clients send them; aggregate tokens/s and each stream's TTFT.

    `client`: another server's dialect of the same API (bench.anchor's llama-server client)."""
    engine = client(url, timeout_s=900)
    ttfts: list[float] = []
    counted = 0

    async def stream(index: int, model: str) -> None:
        nonlocal counted
        messages = [
            {"role": "system", "content": "You are Count Valerian, an ancient vampire noble."},
            {"role": "user", "content": f"Tell me story number {index} about your castle."},
        ]
        started = time.perf_counter()
        first = None
        async for _ in engine.stream_chat(
            model=model, messages=messages, max_tokens=tokens, temperature=0.0, ignore_eos=True
        ):
            first = first or time.perf_counter()
            counted += 1
        assert first is not None, f"{model} streamed nothing"
        ttfts.append((first - started) * 1000)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(stream(index, model) for index, model in enumerate(models)))
        elapsed = time.perf_counter() - started
    finally:
        await engine.close()
    # Stream chunks are tokens here (greedy, ignore_eos); a short count would skew the ratio.
    assert counted >= len(models) * tokens * 0.95, f"{counted} chunks for {len(models)}x{tokens} tokens"
    return LoadFigures(tokens_s=len(models) * tokens / elapsed, ttft_ms=ttfts)


@contextmanager
def plugin_set(*, on: bool) -> Iterator[None]:
    """REVENANT_VLLM_PLUGIN for the workers started inside (they inherit this environment)."""
    before = os.environ.get("REVENANT_VLLM_PLUGIN")
    os.environ["REVENANT_VLLM_PLUGIN"] = "on" if on else "off"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("REVENANT_VLLM_PLUGIN")
        else:
            os.environ["REVENANT_VLLM_PLUGIN"] = before


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def worker_measure(
    *,
    model_dir: Path,
    adapters: list[Path],
    max_lora_rank: int,
    plugin: bool,
    args: argparse.Namespace,
    log: Path,
) -> dict[str, float]:
    url = f"http://127.0.0.1:{free_port()}"
    names = [f"adapter-{index}" for index in range(len(adapters))]
    mixed = [names[index % len(names)] for index in range(args.streams)]
    loads = {
        "base": [SERVED] * args.streams,
        "adapters": mixed,
    }
    results: dict[str, list[LoadFigures]] = {name: [] for name in loads}
    with override_settings(WORKER_MAX_LORA_RANK=max_lora_rank), plugin_set(on=plugin):
        worker = WorkerProcess(url=url, base_model_dir=model_dir, log_path=log, served_name=SERVED)
        worker.start()
    try:
        for name, folder in zip(names, adapters, strict=True):
            adapter_load(url, lora_name=name, folder=folder)
        for models in loads.values():  # warm-up: first-use allocations are not counted
            asyncio.run(load_run(url, models=models[:4], tokens=8))
        for round_index in range(args.rounds):
            for load_name, models in loads.items():
                results[load_name].append(asyncio.run(load_run(url, models=models, tokens=args.tokens)))
                print(
                    f"max rank {max_lora_rank} round {round_index + 1}/{args.rounds} {load_name}: "
                    f"{results[load_name][-1].tokens_s:.1f} tok/s",
                    flush=True,
                    file=sys.stderr,
                )
    finally:
        worker.stop()
    figures: dict[str, float] = {"max_lora_rank": max_lora_rank, "plugin": plugin}
    for load_name, runs in results.items():
        ttfts = [ttft for run in runs for ttft in run.ttft_ms]
        figures[f"{load_name}_tokens_s"] = round(statistics.median(run.tokens_s for run in runs), 1)
        figures[f"{load_name}_ttft_p50_ms"] = round(percentile(ttfts, 0.5))
        figures[f"{load_name}_ttft_p95_ms"] = round(percentile(ttfts, 0.95))
    figures["ratio"] = round(figures["adapters_tokens_s"] / figures["base_tokens_s"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    model_dir = gguf_convert(gguf_path=bundled_gguf_path(), target_dir=default_model_dir())
    ours_rank = settings.WORKER_MAX_LORA_RANK
    with tempfile.TemporaryDirectory() as tmp:
        adapters = random_adapters(model_dir=model_dir, root=Path(tmp), count=args.adapters, rank=ours_rank)
        raw, ours = (
            worker_measure(
                model_dir=model_dir,
                adapters=adapters,
                max_lora_rank=rank,
                plugin=plugin,
                args=args,
                log=Path(tmp) / f"{name}.log",
            )
            for name, rank, plugin in (("raw", VLLM_DEFAULT_MAX_LORA_RANK, False), ("ours", ours_rank, True))
        )
    line = {
        "bench": "multilora", "streams": args.streams, "tokens": args.tokens, "adapters": args.adapters,
        "adapter_rank": ours_rank, "rounds": args.rounds, "dtype": worker_dtype(), "cpu_model": cpu_model(),
        "raw_ratio": raw["ratio"],
        "ours_ratio": ours["ratio"], "raw": raw, "ours": ours,
    }  # fmt: skip
    print(json.dumps(line))
    # Kept for the console's capacity planner, which sizes servers from this machine's figure.
    saved = Path(settings.BENCH_DIR) / "multilora.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({**line, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}))


if __name__ == "__main__":
    main()
