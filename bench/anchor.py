"""Our worker next to llama.cpp's llama-server on the same model, adapters and loads: an anchor.

    python -m bench.anchor [--tokens 64] [--streams 16] [--adapters 8] [--rounds 2] [--threads 2]
                           [--quant]

Our figures alone say little about whether they are good for this CPU; llama.cpp is the
usual yardstick for small models on CPUs, so this runs both, in one process, on one machine:

- llama-server: the one on $LLAMA_SERVER or PATH, else built once from the llama.cpp that the
  pinned llama-cpp-python sdist vendors (LLAMA_CPP_PYTHON), cached in BENCH_DIR/llama.cpp/;
- the base model folder our worker serves, and the same random rank-8 adapters
  (bench.multilora.random_adapters), converted to GGUF with that llama.cpp's own converters
  (bf16; q8_0 for the base with --quant);
- our worker as bench.decode starts it (`worker_argv`, its dtype and LoRA limits).

Loads, all greedy with exactly --tokens tokens: single-stream decode through the base model
and through one adapter (bench.decode), a ~900-token persona prompt's time to first token cold
(never seen) and warm (the same prompt again), and --streams concurrent streams through the
base model, then spread over --adapters distinct adapters (bench.multilora). llama-server has
every adapter loaded at scale 0 and each request picks its own by id. Each round runs every
load on one engine, then on the other, first one then the other first, so machine noise falls
on both; figures are medians over rounds. Prints one JSON line and writes it to
BENCH_DIR/anchor.json; both engines' logs are left in BENCH_DIR/anchor/.

Run it on a quiet machine: llama.cpp's threads spin while they wait for each other, so other
load costs it far more than it costs vLLM (the JSON line carries the load average before).
The first run downloads the sdist (~75 MB) and builds llama-server: 26 min at nice 19 on
2 cores beside other work. Converted GGUF files and the adapters are cached too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings.test")
django.setup()

import httpx  # noqa: E402 - after django.setup(), like every module that reads settings
from django.conf import settings  # noqa: E402
from openai import AsyncStream  # noqa: E402
from openai.types.chat import ChatCompletionChunk  # noqa: E402

from bench.decode import inter_token_ms, memory_read_bandwidth  # noqa: E402
from bench.multilora import LoadFigures, load_run, percentile, random_adapters  # noqa: E402
from console.localstack import free_port  # noqa: E402
from console.processes import process_start, process_stop, ready_wait  # noqa: E402
from inference.base_models import bundled_gguf_path, default_model_dir, gguf_convert  # noqa: E402
from inference.engine import EngineClient, StreamUsage  # noqa: E402
from inference.residency import adapter_load  # noqa: E402
from inference.workers import WorkerProcess, cpu_model, worker_argv  # noqa: E402

# The llama-cpp-python release whose sdist carries llama.cpp's source (vendor/llama.cpp, with
# tools/server and the GGUF converters): PyPI is the one registry reachable here that has it.
# 0.3.36 vendors llama.cpp commit 0c1e570.
LLAMA_CPP_PYTHON = "0.3.36"
# The machine is 2 cores shared with other benchmarks: the one-time build runs at nice 19.
BUILD_JOBS = 2
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",  # this CPU's instructions (AVX-512, AMX where present), as vLLM's kernels use
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary in the cache folder
    # Nothing may be fetched at build or run time: no HTTPS client, no prebuilt web UI download.
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
]
SERVED = "bench-base"
PERSONA_TOKENS = 900  # a full persona card, memories included, as a turn's prompt starts
PERSONA_FACTS = [
    "You are Count Valerian, an ancient vampire noble who has ruled the valley of Morrow for "
    "four hundred years from the black castle on the cliff above the river.",
    "You speak slowly and formally, in long sentences, and you never use modern words; you call "
    "every visitor 'guest' until they have told you their name, and 'friend' only after a gift.",
    "You remember the plague year, the burning of the old chapel, the siege by the Duke of "
    "Harrowgate and the winter the river froze so hard that wolves crossed it to the village.",
    "You are courteous to travellers, cruel to liars and patient with children; you never drink "
    "from anyone who has eaten at your table, because hospitality is a sacred law to you.",
    "Your servants are Marta the cook, old Tobias the gatekeeper, and the silent twins who tend "
    "the library; you trust Marta completely and Tobias not at all since the affair of the keys.",
    "You fear sunlight, running water and the silver bells of the abbey; you do not fear garlic, "
    "and you find the villagers' strings of it hung on their doors faintly amusing.",
    "You want the player to find the lost signet ring of your house, stolen by a thief who fled "
    "towards the marshes; you will reward them with gold, a letter of passage or a secret.",
    "You never reveal where you sleep during the day, you never admit to having killed anyone in "
    "the valley, and you change the subject when asked about your late wife, Countess Ilse.",
]


def llama_cpp_dir() -> Path:
    return Path(settings.BENCH_DIR) / "llama.cpp" / LLAMA_CPP_PYTHON


def llama_cpp_source() -> Path:
    """llama.cpp's source tree as the pinned sdist vendors it, downloaded once with pip."""
    root = llama_cpp_dir()
    unpacked = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    source = unpacked / "vendor" / "llama.cpp"
    if (source / "convert_hf_to_gguf.py").exists():
        return source
    root.mkdir(parents=True, exist_ok=True)
    print(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON} (sdist) for llama.cpp's source", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--dest", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
            check=True,
        )  # fmt: skip
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(Path(tmp) / "unpacked", filter="data")
        # Renamed into place only once whole: an interrupted download leaves nothing half there.
        (Path(tmp) / "unpacked" / unpacked.name).rename(unpacked)
    return source


def llama_server_build(source: Path) -> Path:
    """Build llama-server alone (not the other tools) into the cache folder, once."""
    build = llama_cpp_dir() / "build"
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    started = time.perf_counter()
    nice = ["nice", "-n", "19"]
    subprocess.run(
        [*nice, "cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_OPTIONS], check=True
    )
    subprocess.run(
        [*nice, "cmake", "--build", str(build), "--target", "llama-server", "-j", str(BUILD_JOBS)], check=True
    )
    print(f"built {binary} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return binary


def llama_server_binary(source: Path) -> tuple[Path, str]:
    """(the llama-server to run, its version): $LLAMA_SERVER, else PATH, else our build."""
    given = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    binary = Path(given) if given else llama_server_build(source)
    shown = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    # "version: 0.5.0-dev (build 1, commit 0c1e570)" here; older builds say "version: 4589 (abc1234)".
    found = re.search(r"^version: (.+)$", shown.stdout + shown.stderr, flags=re.MULTILINE)
    version = found.group(1).strip() if found else "unknown"
    if not given:
        # The sdist carries a one-commit clone, so its build number (1) means nothing: the pin does.
        version += f" from the llama-cpp-python {LLAMA_CPP_PYTHON} sdist"
    return binary, version


def gguf_from(*, script: Path, argv: list[str], out: Path) -> Path:
    """Run one of llama.cpp's converters into `out`, once (converted files are cached)."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    log = out.with_suffix(".log")
    with log.open("wb") as output:
        # Its own gguf-py (the converter puts it first on sys.path), so the files match the server.
        done = subprocess.run(
            ["nice", "-n", "19", sys.executable, str(script), *argv, "--outfile", str(partial)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            check=False,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{script.name} failed ({done.returncode}); see {log}:\n{tail}")
    partial.rename(out)
    return out


def llama_models(
    *, source: Path, model_dir: Path, adapters: list[Path], outtype: str
) -> tuple[Path, list[Path]]:
    """(the base model, each adapter) as GGUF, keyed by the model folder's name."""
    folder = llama_cpp_dir() / "gguf"
    base = gguf_from(
        script=source / "convert_hf_to_gguf.py",
        argv=[str(model_dir), "--outtype", outtype],
        out=folder / f"{model_dir.name}-{outtype}.gguf",
    )
    # Adapters stay bf16 even under --quant: they are ~1 % of the bytes a token reads.
    loras = [
        gguf_from(
            script=source / "convert_lora_to_gguf.py",
            argv=[str(adapter), "--base", str(model_dir), "--outtype", "bf16"],
            out=folder / f"{model_dir.name}-{adapter.parent.name}-{adapter.name}-bf16.gguf",
        )
        for adapter in adapters
    ]
    return base, loras


def adapters_cached(*, model_dir: Path, count: int, rank: int) -> list[Path]:
    """bench.multilora's random adapters, kept: they are seeded by index, so always the same."""
    root = Path(settings.BENCH_DIR) / "anchor" / model_dir.name / f"adapters-r{rank}"
    folders = [root / f"adapter-{index}" for index in range(count)]
    if all((folder / "adapter_config.json").exists() for folder in folders):
        return folders
    return random_adapters(model_dir=model_dir, root=root, count=count, rank=rank)


class LlamaServerClient(EngineClient):
    """llama-server's dialect of the API: one model, and each request names its adapters by id
    in `lora` (tools/server/README.md); the others stay at the scale 0 they were started with.

    Served names map onto that: `adapter-<i>` is the i-th adapter at scale 1, any other name the
    base model. Only what the benchmarks send is passed on.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 60.0) -> None:
        super().__init__(base_url, timeout_s=timeout_s)
        # llama-server closes idle keep-alive connections; a request that meets one is refused
        # before it starts ("Server disconnected without sending a response") and is safe to resend.
        self._client = self._client.with_options(max_retries=2)

    async def stream_chat(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        usage: StreamUsage | None = None,
        ignore_eos: bool = False,
        priority: int = 0,
    ) -> AsyncIterator[str]:
        adapter = re.fullmatch(r"adapter-(\d+)", model)
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stream": True,
            "extra_body": {
                "lora": [{"id": int(adapter.group(1)), "scale": 1.0}] if adapter else [],
                "ignore_eos": ignore_eos,
            },
        }
        # The client's overloads want its TypedDicts; plain dicts are what goes on the wire.
        stream = cast(AsyncStream[ChatCompletionChunk], await self._client.chat.completions.create(**request))
        try:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
        finally:
            await stream.close()


@dataclass
class LlamaServer:
    """A llama-server process on loopback, serving the base GGUF with every adapter loaded."""

    binary: Path
    model: Path
    loras: list[Path]
    slots: int
    threads: int
    log_path: Path
    url: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [
            str(self.binary),
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--parallel", str(self.slots),
            # Each slot holds as long a context as our worker allows one request.
            "--ctx-size", str(self.slots * settings.WORKER_MAX_MODEL_LEN),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads),
            "--cont-batching",
            "--no-webui",
        ]  # fmt: skip
        if self.loras:
            # Loaded at scale 0: a request without `lora` is the base model, as on our worker.
            argv += ["--lora", ",".join(str(lora) for lora in self.loras), "--lora-init-without-apply"]
        self.process = process_start(argv=argv, log_path=self.log_path)
        ready_wait(
            self.healthy,
            timeout_s=180,
            what=f"llama-server at {self.url} to be healthy",
            every_s=0.5,
            process=self.process,
            log_path=self.log_path,
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            process_stop(self.process, grace_s=10)


# --- the loads ------------------------------------------------------------------------------


@dataclass
class Engine:
    name: str
    url: str
    client: type[EngineClient]
    base: str  # the name that reaches the base model; adapters are `adapter-<i>` on both


def persona_prompt(*, model_dir: Path) -> tuple[str, int]:
    """(a system prompt of about PERSONA_TOKENS tokens, its chat-templated token count)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lines: list[str] = []
    count = 0
    while count < PERSONA_TOKENS:
        index = len(lines)
        fact = PERSONA_FACTS[index % len(PERSONA_FACTS)]
        lines.append(f"Memory {index + 1}: {fact}" if index >= len(PERSONA_FACTS) else fact)
        messages = [
            {"role": "system", "content": "\n".join(lines)},
            {"role": "user", "content": "Who are you?"},
        ]
        # Rendered, then counted: a tokenizing apply_chat_template returns a dict in transformers 5.
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return "\n".join(lines), count


async def ttft_ms(engine: EngineClient, *, model: str, messages: list[dict[str, str]]) -> float:
    """Time to the first token of a one-token reply: the prompt's prefill, and nothing after it."""
    started = time.perf_counter()
    first = None
    async for _ in engine.stream_chat(model=model, messages=messages, max_tokens=1, temperature=0.0):
        first = first or time.perf_counter()
    if first is None:
        raise RuntimeError(f"{model} streamed nothing")
    return (first - started) * 1000


async def persona_ttft_ms(target: Engine, *, model: str, persona: str, nonce: str) -> tuple[float, float]:
    """(cold, warm) time to first token of the persona prompt: first seen, then the same again.

    `nonce` starts the prompt, so no earlier request shares a prefix with it: a new NPC's turn.
    """
    messages = [
        {"role": "system", "content": f"[{nonce}]\n{persona}"},
        {"role": "user", "content": "Who are you?"},
    ]
    engine = target.client(target.url, timeout_s=600)
    try:
        cold = await ttft_ms(engine, model=model, messages=messages)
        warm = await ttft_ms(engine, model=model, messages=messages)
    finally:
        await engine.close()
    return cold, warm


def engine_round(
    target: Engine, *, args: argparse.Namespace, persona: str, round_index: int
) -> tuple[dict[str, float], dict[str, LoadFigures]]:
    """Every load once on one engine: (single-request figures, concurrent loads)."""
    adapter = "adapter-0"
    single: dict[str, float] = {}
    for label, model in (("base", target.base), ("adapter", adapter)):
        ms, _ = asyncio.run(
            inter_token_ms(target.url, model=model, tokens=args.tokens, runs=1, client=target.client)
        )
        single[f"decode_{label}_ms_per_token"] = ms
        cold, warm = asyncio.run(
            persona_ttft_ms(
                target, model=model, persona=persona, nonce=f"{target.name} {round_index} {label}"
            )
        )
        single[f"persona_{label}_ttft_cold_ms"] = cold
        single[f"persona_{label}_ttft_warm_ms"] = warm
    mixed = [f"adapter-{index % args.adapters}" for index in range(args.streams)]
    loads = {}
    for name, models in (("base", [target.base] * args.streams), ("adapters", mixed)):
        loads[name] = asyncio.run(
            load_run(target.url, models=models, tokens=args.tokens, client=target.client)
        )
    decode = f"{single['decode_base_ms_per_token']:.1f}/{single['decode_adapter_ms_per_token']:.1f}"
    print(
        f"round {round_index + 1}/{args.rounds} {target.name}: decode base/adapter {decode} ms/token, "
        f"base {loads['base'].tokens_s:.1f} tok/s, adapters {loads['adapters'].tokens_s:.1f} tok/s",
        file=sys.stderr,
        flush=True,
    )
    return single, loads


def figures_of(singles: list[dict[str, float]], loads: list[dict[str, LoadFigures]]) -> dict[str, float]:
    """Medians over rounds; TTFT percentiles over every stream of every round."""
    figures = {key: round(statistics.median(run[key] for run in singles), 2) for key in singles[0]}
    for label in ("base", "adapter"):
        figures[f"decode_{label}_tokens_s"] = round(1000 / figures[f"decode_{label}_ms_per_token"], 1)
    for name in ("base", "adapters"):
        runs = [run[name] for run in loads]
        ttfts = [ttft for run in runs for ttft in run.ttft_ms]
        figures[f"{name}_tokens_s"] = round(statistics.median(run.tokens_s for run in runs), 1)
        figures[f"{name}_ttft_p50_ms"] = round(percentile(ttfts, 0.5))
        figures[f"{name}_ttft_p95_ms"] = round(percentile(ttfts, 0.95))
    figures["multilora_ratio"] = round(figures["adapters_tokens_s"] / figures["base_tokens_s"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 2,
        help="llama-server's threads (default: every core)",
    )
    parser.add_argument("--quant", action="store_true", help="llama.cpp's base model in q8_0, not bf16")
    args = parser.parse_args()
    outtype = "q8_0" if args.quant else "bf16"
    if args.threads < (os.cpu_count() or args.threads):
        # The same cores for our worker (vLLM's CPU OpenMP binding; worker_env passes VLLM_CPU_*).
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")

    source = llama_cpp_source()
    binary, version = llama_server_binary(source)
    model_dir = gguf_convert(gguf_path=bundled_gguf_path(), target_dir=default_model_dir())
    rank = settings.WORKER_MAX_LORA_RANK
    adapters = adapters_cached(model_dir=model_dir, count=args.adapters, rank=rank)
    base_gguf, lora_ggufs = llama_models(
        source=source, model_dir=model_dir, adapters=adapters, outtype=outtype
    )
    persona, persona_tokens = persona_prompt(model_dir=model_dir)
    url = f"http://127.0.0.1:{free_port()}"
    argv = worker_argv(model_path=str(model_dir), served_name=SERVED, url=url)
    dtype = argv[argv.index("--dtype") + 1]
    bandwidth = memory_read_bandwidth()

    # Kept after the run (both engines' own accounts of it), replaced by the next run.
    logs = Path(settings.BENCH_DIR) / "anchor"
    for name in ("worker.log", "llama-server.log"):
        (logs / name).unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        # ggml's threads wait for each other spinning, so a busy machine slows llama.cpp far more
        # than vLLM: beside a test run, 2 threads at nice 19 took 400-480 ms/token, 1 took 30-38.
        print(f"load average {load_before:.1f}: llama.cpp's figures will not be fair", file=sys.stderr)

    worker = WorkerProcess(
        url=url, base_model_dir=model_dir, log_path=logs / "worker.log", served_name=SERVED
    )
    llama = LlamaServer(
        binary=binary,
        model=base_gguf,
        loras=lora_ggufs,
        slots=args.streams,
        threads=args.threads,
        log_path=logs / "llama-server.log",
    )
    try:
        worker.start()
        for folder in adapters:
            adapter_load(url, lora_name=folder.name, folder=folder)
        llama.start()
        engines = [
            Engine(name="ours", url=url, client=EngineClient, base=SERVED),
            Engine(name="llama.cpp", url=llama.url, client=LlamaServerClient, base="base"),
        ]
        mixed = [f"adapter-{index % args.adapters}" for index in range(4)]
        for target in engines:  # warm-up: first-use allocations are not counted
            for models in ([target.base] * 4, mixed):
                asyncio.run(load_run(target.url, models=models, tokens=8, client=target.client))
        singles: dict[str, list[dict[str, float]]] = {target.name: [] for target in engines}
        loads: dict[str, list[dict[str, LoadFigures]]] = {target.name: [] for target in engines}
        for round_index in range(args.rounds):
            for target in engines if round_index % 2 == 0 else engines[::-1]:
                single, load = engine_round(target, args=args, persona=persona, round_index=round_index)
                singles[target.name].append(single)
                loads[target.name].append(load)
    finally:
        llama.stop()
        worker.stop()

    ours = figures_of(singles["ours"], loads["ours"])
    theirs = figures_of(singles["llama.cpp"], loads["llama.cpp"])
    # ours / llama.cpp: above 1 we are faster (for a TTFT, slower).
    compared = {
        f"decode_base_vs_llama_{outtype}": "decode_base_tokens_s",
        f"decode_adapter_vs_llama_{outtype}": "decode_adapter_tokens_s",
        "base_aggregate_ours_over_llama": "base_tokens_s",
        "adapters_aggregate_ours_over_llama": "adapters_tokens_s",
        "persona_cold_ttft_ours_over_llama": "persona_adapter_ttft_cold_ms",
    }
    ratios = {name: round(ours[key] / theirs[key], 3) for name, key in compared.items()}
    ratios["multilora_ratio_ours"] = ours["multilora_ratio"]
    ratios["multilora_ratio_llama"] = theirs["multilora_ratio"]
    line = {
        "bench": "anchor", "cpu_model": cpu_model(), "threads": args.threads, "llama_cpp_version": version,
        "llama_cpp_outtype": outtype, "tokens": args.tokens, "streams": args.streams,
        "adapters": args.adapters, "adapter_rank": rank, "rounds": args.rounds,
        "persona_prompt_tokens": persona_tokens, "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "load_average_before": round(load_before, 2),
        "ours": {"dtype": dtype, **ours}, f"llama_cpp_{outtype}": theirs, "ratios": ratios,
    }  # fmt: skip
    print(json.dumps(line))
    saved = Path(settings.BENCH_DIR) / "anchor.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({**line, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}))


if __name__ == "__main__":
    main()
