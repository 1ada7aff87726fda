"""Gold turns through the real bridge, cold and warm, timed part by part.

    python -m bench.turn [--turns 30] [--npc count-valerian] [--cold-npcs a,b,c,d]

One run (bench.stack: its own database with the demo world and its lore ingested, a vLLM worker,
one Daphne as `make run` starts it) plays, over one websocket session of one player, at the
Gold tier (BRIDGE_DEFAULT_TIER: no positions frame places the NPCs):

- cold turns: the first turn of each of --cold-npcs (NPCs of different archetypes), whose
  persona the worker has not seen yet and whose turn context Daphne has not cached;
- warm turns: --turns turns with --npc, new words each time, so its memory of the player grows
  (the recent turns; consolidation into facts needs a Celery worker, which the bench has not).

Every NPC's lore pack is built beforehand (a Celery task's work, done in this process), and an
unmeasured turn with --warmup-npc (another archetype) loads Daphne's embedding model, so lore
is ranked and used in the measured turns as in a running game.

Per turn, the client's own TTFT (to the first turn.delta) and total (to turn.end); turn.end's
timing (ttft_ms, total_ms, memory_ms, lore_ms, prompt_ms, choices_ms); and, from the worker's
Prometheus /metrics read before and after the turn (turns run one at a time, the worker is idle
in between), the engine's share summed over the turn's requests (the dialogue and the
emotion/action request): queue, prefill and decode time, prompt and generated tokens, prefix
cache queries and hits. The emotion/action request starts at the dialogue's first token and
decodes beside it, so the engine's decode time, summed over both, may exceed the turn's; its
prefill reuses the dialogue's cached prompt. Reported: p50/p95 of each, for warm and cold turns
apart, with the prefix cache hit rate and the uncached prompt tokens per turn (the tokens
prefilled), the worker's dtype and the CPU.
Prints one JSON line and keeps it in BENCH_DIR/turn.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, cast

from bench.stack import PROMPTS, demo_world_ready, django_setup, figures_print, percentile, stack_running

SEED = 1234
# One NPC of each demo archetype but the warm-up's: their personas share no prefix.
COLD_NPCS = "count-valerian,ulric-greymane,shambler,master-grisk"
WARMUP_NPC = "archlich-morrath"
# Openers x PROMPTS: every warm turn says something new (a repeated line would be all cached).
OPENERS = [
    "",
    "Listen. ",
    "Another thing. ",
    "Be honest. ",
    "I must ask. ",
    "Tell me plainly. ",
    "Good evening. ",
]
# Engine figures read from /metrics (summed over label sets: models, finish reasons).
ENGINE_SECONDS = {
    "queue_ms": "vllm:request_queue_time_seconds_sum",
    "prefill_ms": "vllm:request_prefill_time_seconds_sum",
    "decode_ms": "vllm:request_decode_time_seconds_sum",
}
ENGINE_COUNTS = {
    "engine_requests": "vllm:request_success_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "prefix_cache_queries": "vllm:prefix_cache_queries_total",
    "prefix_cache_hits": "vllm:prefix_cache_hits_total",
}
TURN_PARTS = ("ttft_ms", "total_ms", "memory_ms", "lore_ms", "prompt_ms", "choices_ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=30, help="warm turns with --npc")
    parser.add_argument("--npc", default="count-valerian", help="the NPC of the warm turns")
    parser.add_argument("--cold-npcs", default=COLD_NPCS, help="comma-separated; --npc's is taken first")
    parser.add_argument("--warmup-npc", default=WARMUP_NPC, help="unmeasured first turns (not a cold NPC)")
    args = parser.parse_args()
    cold = [args.npc, *(slug for slug in args.cold_npcs.split(",") if slug and slug != args.npc)]
    if args.warmup_npc in cold:
        parser.error("--warmup-npc must not be one of the cold NPCs: its persona would be cached")
    # Gold for every NPC (none is placed by positions); seeded; a busy 2-core worker may take
    # longer than Gold's 30 s deadline, and no measured turn may end early with a bark.
    django_setup(
        environ={"TURN_SEED": str(SEED), "TURN_DEADLINE_GOLD_S": "600", "BRIDGE_DEFAULT_TIER": "gold"}
    )
    demo_world_ready()

    from django.conf import settings
    from django.core.management import call_command

    from console.services.keys import game_key_create
    from inference.workers import cpu_model, worker_dtype
    from memory.tasks import lore_pack_task

    print("ingesting the demo lore and building the NPCs' lore packs…", file=sys.stderr)
    call_command(
        "ingest", str(Path(settings.DEMO_DIR) / "lore"), world="ravenmoor", verbosity=0, stdout=sys.stderr
    )
    for slug in [args.warmup_npc, *cold]:
        lore_pack_task(slug)  # the Celery task's body, run here (the bench has no Celery worker)
    key = game_key_create(name=f"bench-turn-{time.time_ns()}", scopes=["play", "players"])[1]
    with stack_running() as stack:
        url = stack.daphne_start(name="turn", worker=stack.worker_url)
        turns = asyncio.run(
            _play(url=url, key=key, worker=stack.worker_url, cold=cold, npc=args.npc, warm_turns=args.turns,
                  warmup_npc=args.warmup_npc)
        )  # fmt: skip
    figures = {
        "bench": "turn", "tier": "gold", "npc": args.npc, "cold_npcs": cold, "dtype": worker_dtype(),
        "cpu_model": cpu_model(),
        "cold": _summary([turn for turn in turns if turn["kind"] == "cold"]),
        "warm": _summary([turn for turn in turns if turn["kind"] == "warm"]),
    }  # fmt: skip
    figures_print(figures)
    # Kept beside the other benches' figures (the lead compares runs from it).
    saved = Path(settings.BENCH_DIR) / "turn.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({**figures, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}))


async def _play(
    *, url: str, key: str, worker: str, cold: list[str], npc: str, warm_turns: int, warmup_npc: str
) -> list[dict[str, Any]]:
    import httpx
    from websockets.asyncio.client import connect

    lines = [opener + prompt for opener in OPENERS for prompt in PROMPTS]
    if warm_turns + len(cold) > len(lines):
        raise SystemExit(f"at most {len(lines) - len(cold)} warm turns: each needs new words")
    turns: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=worker, timeout=10) as metrics,
        connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket,
    ):
        await socket.send(json.dumps({"type": "session.start", "player_id": f"bench-turn-{time.time_ns()}"}))
        ready = json.loads(await socket.recv())
        assert ready["type"] == "session.ready", ready
        player = _Player(socket=socket, metrics=metrics)
        # Until the lore is ranked: the first turn only starts Daphne's embedding model loading.
        for _ in range(30):
            warmup = await player.turn(warmup_npc, "Hello.")
            if warmup["lore_state"] != "model_loading":
                break
            await asyncio.sleep(2)
        for index, slug in enumerate(cold):
            turns.append({"kind": "cold", **await player.turn(slug, lines[index])})
            _progress("cold", slug, turns[-1])
        for index in range(warm_turns):
            turns.append({"kind": "warm", **await player.turn(npc, lines[len(cold) + index])})
            _progress(f"warm {index + 1}/{warm_turns}", npc, turns[-1])
    return turns


class _Player:
    """One player's session: its turns, one at a time, each with the worker's figures around it."""

    def __init__(self, *, socket: Any, metrics: Any) -> None:
        self.socket, self.metrics, self.sent = socket, metrics, 0

    async def turn(self, npc: str, text: str) -> dict[str, Any]:
        before = await self._engine_idle()
        self.sent += 1
        request = {"type": "npc.say", "request_id": f"r{self.sent}", "npc_id": npc, "text": text}
        started = time.perf_counter()
        await self.socket.send(json.dumps(request))
        ttft, tier = None, None
        while True:
            frame = json.loads(await self.socket.recv())
            if frame["type"] == "turn.start":
                tier = frame["tier"]
            elif frame["type"] == "turn.delta" and ttft is None:
                ttft = (time.perf_counter() - started) * 1000
            elif frame["type"] == "turn.end":
                total = (time.perf_counter() - started) * 1000
                break
            elif frame["type"] in ("turn.error", "error"):
                raise RuntimeError(f"the bridge answered {frame}")
        # Acknowledged as a game client does: the bridge closes a socket (4408) whose
        # unacknowledged frames pass BRIDGE_MAX_UNACKED, which 30 streamed turns do.
        await self.socket.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
        if tier != "gold":
            raise RuntimeError(f"{npc}'s turn ran at {tier}, not gold")
        # The trace is written after turn.end; waiting for it also means the next turn finds
        # this one in the NPC's memory of the player.
        trace = await _trace(frame["turn_id"])
        after = await self._engine_idle()
        engine = {name: after[metric] - before[metric] for name, metric in ENGINE_COUNTS.items()}
        engine |= {name: (after[metric] - before[metric]) * 1000 for name, metric in ENGINE_SECONDS.items()}
        return {
            "npc": npc, "client_ttft_ms": ttft, "client_total_ms": total,
            **{part: frame["timing"].get(part) for part in TURN_PARTS},
            **engine, "fallbacks": frame["fallbacks"], "memory": frame["memory"],
            "lore_state": trace.get("lore_state"), "lore_chunks": len(trace.get("lore") or []),
            "usage": frame["usage"],
        }  # fmt: skip

    async def _engine_idle(self) -> defaultdict[str, float]:
        """The worker's figures once it runs and queues nothing (an aborted stream's request
        may still be finishing when turn.end arrives)."""
        for _ in range(100):  # 10 s
            figures = _metrics_sum((await self.metrics.get("/metrics")).text)
            if not figures.get("vllm:num_requests_running") and not figures.get("vllm:num_requests_waiting"):
                return figures
            await asyncio.sleep(0.1)
        raise RuntimeError("the worker never went idle")


def _metrics_sum(text: str) -> defaultdict[str, float]:
    """Prometheus text: each series' value summed over its label sets."""
    sums: defaultdict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit(" ", 1)[-1]
        sums[name] += float(value)
    return sums


async def _trace(turn_id: str) -> dict[str, Any]:
    """The turn's trace from the memory stream, as the remember stage archived it."""
    from django.conf import settings
    from redis.asyncio import Redis

    from memory.events import ENTRY_FIELD

    async with Redis.from_url(settings.REDIS_URL) as redis:
        for _ in range(200):  # 10 s
            # The client returns bytes (no decode_responses); its stubs allow for anything.
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await redis.xrevrange(settings.MEMORY_STREAM, count=20),
            )
            for _, fields in entries:
                trace = json.loads(fields[ENTRY_FIELD.encode()])["data"].get("trace") or {}
                if trace.get("turn_id") == turn_id:
                    return trace
            await asyncio.sleep(0.05)
    raise RuntimeError(f"turn {turn_id} never reached the memory stream")


def _progress(label: str, npc: str, turn: dict[str, Any]) -> None:
    line = (
        f"{label} {npc}: ttft {turn['client_ttft_ms']:.0f} ms, total {turn['client_total_ms']:.0f} ms, "
        f"prefill {turn['prefill_ms']:.0f} ms, decode {turn['decode_ms']:.0f} ms, "
        f"cache {turn['prefix_cache_hits']:.0f}/{turn['prefix_cache_queries']:.0f}, lore {turn['lore_state']}"
    )
    print(line, file=sys.stderr)


def _summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95 of each figure over `turns` (a part that did not run in a turn is left out)."""
    if not turns:
        return {"turns": 0}
    names = [
        "client_ttft_ms", "client_total_ms", *TURN_PARTS, *ENGINE_SECONDS, "engine_requests", "prompt_tokens",
        "generation_tokens",
    ]  # fmt: skip
    figures: dict[str, Any] = {"turns": len(turns)}
    for name in names:
        values = [float(turn[name]) for turn in turns if turn[name] is not None]
        figures[name] = {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}
    uncached = [turn["prefix_cache_queries"] - turn["prefix_cache_hits"] for turn in turns]
    figures["uncached_prompt_tokens"] = {
        "p50": round(percentile(uncached, 50), 1), "p95": round(percentile(uncached, 95), 1),
    }  # fmt: skip
    queries = sum(turn["prefix_cache_queries"] for turn in turns)
    hits = sum(turn["prefix_cache_hits"] for turn in turns)
    figures["prefix_cache_hit_rate"] = round(hits / queries, 3) if queries else None
    figures["lore_used_share"] = round(sum(turn["lore_state"] == "used" for turn in turns) / len(turns), 3)
    figures["memory_turns_max"] = max(int(turn["memory"]["turns"]) for turn in turns)
    figures["fallbacks"] = dict(Counter(reason for turn in turns for reason in turn["fallbacks"]))
    return figures


if __name__ == "__main__":
    main()
