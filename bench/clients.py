"""Many game clients on one Daphne process: errors, lost frames, added latency, memory.

    python -m bench.clients [--connections 500] [--speakers 50] [--turns 2]

One Daphne process (as `make run` starts it) and one vLLM worker on the base model. This
process opens --connections websockets with a session each; --speakers of them talk to the
demo's NPCs (--turns turns each, one after the other), the rest stay idle and ping every few
seconds, as a game's connected-but-quiet players do. Every frame's `seq` is checked: a gap is
a lost frame, a repeat or a step back is out of order.

Figures (one JSON line):
- errors: failed connections, `error`/`turn.error` frames, sockets closed by the server;
- frames lost / out of order, by seq;
- latency the bridge adds to a turn: the client's time to the first `turn.delta` minus the
  time the turn service measured inside Daphne (`turn.end.timing.ttft_ms`), p50/p95, for
  speakers' first turns (the NPC's context is read from Postgres) and later ones (cached);
  and the idle clients' ping round trip while the speakers' turns stream. The clients run on
  the same 2 cores as Daphne and the worker, so these include CPU contention;
- Daphne's resident memory before the clients, and its peak (the kernel's VmHWM).

A 2-core CPU worker cannot answer 50 players at once within the product's Gold deadline (30 s:
the turn would end with a bark), so the run sets a long one (--deadline-s) and the turns
stream; fallbacks are counted under `fallbacks`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stack import PROMPTS, demo_world_ready, django_setup, figures_print, percentile, stack_running

PING_EVERY_S = 5.0
OPEN_BATCH = 50  # connections opened at once: a game's players do not all arrive in one ms


@dataclass
class Client:
    """One websocket with its session; checks the seq of every frame it receives."""

    index: int
    socket: Any = None
    last_seq: int = 0
    received: int = 0
    lost: int = 0
    out_of_order: int = 0
    errors: list[str] = field(default_factory=list)
    closed_by_server: bool = False
    frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.socket:
                frame = json.loads(raw)
                self.received += 1
                seq = frame.get("seq", 0)
                if seq > self.last_seq + 1:
                    self.lost += seq - self.last_seq - 1
                elif seq <= self.last_seq and seq != 0:
                    self.out_of_order += 1
                self.last_seq = max(self.last_seq, seq)
                if frame["type"] in ("error", "turn.error"):
                    self.errors.append(f"{frame['type']}:{frame.get('code')}")
                await self.frames.put(frame)
        except ConnectionClosed:
            pass
        self.closed_by_server = True

    async def next_frame(self, *kinds: str, timeout_s: float = 600) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.frames.get()
                if frame["type"] in kinds:
                    return frame


@dataclass
class Figures:
    turns: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    added_ms: list[float] = field(default_factory=list)  # turns after a speaker's first
    added_first_ms: list[float] = field(default_factory=list)
    ping_ms: list[float] = field(default_factory=list)
    fallbacks: Counter[str] = field(default_factory=Counter)
    connect_errors: list[str] = field(default_factory=list)


def _rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _open(url: str, key: str, client: Client, figures: Figures) -> None:
    from websockets.asyncio.client import connect

    try:
        client.socket = await connect(url, additional_headers={"Authorization": f"Bearer {key}"})
        await client.socket.send(json.dumps({"type": "session.start", "player_id": f"bench-{client.index}"}))
        asyncio.get_running_loop().create_task(client.read())
        await client.next_frame("session.ready", timeout_s=60)
    except Exception as exc:  # noqa: BLE001 - every failure is a figure here, not a crash
        figures.connect_errors.append(f"{type(exc).__name__}: {exc}")
        client.socket = None


async def _speak(client: Client, npcs: list[str], turns: int, figures: Figures) -> None:
    for turn in range(turns):
        npc = npcs[(client.index + turn) % len(npcs)]
        text = PROMPTS[(client.index + turn) % len(PROMPTS)]
        started = time.perf_counter()
        request_id = f"r{turn}"
        say = {"type": "npc.say", "request_id": request_id, "npc_id": npc, "text": text}
        await client.socket.send(json.dumps(say))
        first = await client.next_frame("turn.delta", "turn.error", "error")
        if first["type"] != "turn.delta":
            continue
        ttft = (time.perf_counter() - started) * 1000
        end = await client.next_frame("turn.end", "turn.error")
        if end["type"] != "turn.end":
            continue
        figures.turns += 1
        figures.ttft_ms.append(ttft)
        # A speaker's first turn to an NPC this Daphne has not seen for TURN_CONTEXT_TTL_S reads
        # the NPC from Postgres first (inference.context); later turns find it cached.
        (figures.added_ms if turn else figures.added_first_ms).append(ttft - end["timing"]["ttft_ms"])
        figures.fallbacks.update(f for f in end["fallbacks"] if not f.startswith("adapter_missing"))
        await client.socket.send(json.dumps({"type": "ack", "seq": client.last_seq}))


async def _idle(client: Client, stop: asyncio.Event, figures: Figures) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await client.socket.send(json.dumps({"type": "ping"}))
        await client.next_frame("pong", timeout_s=60)
        figures.ping_ms.append((time.perf_counter() - started) * 1000)
        await client.socket.send(json.dumps({"type": "ack", "seq": client.last_seq}))
        try:
            await asyncio.wait_for(stop.wait(), timeout=PING_EVERY_S)
        except TimeoutError:
            pass


async def _run(*, url: str, key: str, npcs: list[str], connections: int, speakers: int, turns: int) -> dict:
    figures = Figures()
    clients = [Client(index) for index in range(connections)]
    started = time.perf_counter()
    for batch in range(0, connections, OPEN_BATCH):
        opening = clients[batch : batch + OPEN_BATCH]
        await asyncio.gather(*(_open(url, key, client, figures) for client in opening))
        print(f"{min(batch + OPEN_BATCH, connections)}/{connections} connected", file=sys.stderr)
    open_s = time.perf_counter() - started
    live = [client for client in clients if client.socket is not None]
    talking, quiet = live[:speakers], live[speakers:]
    stop = asyncio.Event()
    idlers = [asyncio.create_task(_idle(client, stop, figures)) for client in quiet]
    started = time.perf_counter()
    await asyncio.gather(*(_speak(client, npcs, turns, figures) for client in talking))
    speak_s = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*idlers, return_exceptions=True)
    closed_by_server = sum(client.closed_by_server for client in live)
    for client in live:
        await client.socket.close()
    frame_errors = Counter(error for client in live for error in client.errors)
    return {
        "connections_open": len(live),
        "connect_s": round(open_s, 1),
        "speak_s": round(speak_s, 1),
        "turns": figures.turns,
        "errors": len(figures.connect_errors) + sum(frame_errors.values()) + closed_by_server,
        "connect_errors": Counter(figures.connect_errors).most_common(3),
        "frame_errors": dict(frame_errors),
        "closed_by_server": closed_by_server,
        "frames_received": sum(client.received for client in live),
        "frames_lost": sum(client.lost for client in live),
        "frames_out_of_order": sum(client.out_of_order for client in live),
        "ttft_p50_ms": round(percentile(figures.ttft_ms, 50), 1),
        "ttft_p95_ms": round(percentile(figures.ttft_ms, 95), 1),
        "added_p50_ms": round(percentile(figures.added_ms, 50), 2),
        "added_p95_ms": round(percentile(figures.added_ms, 95), 2),
        "added_first_turn_p50_ms": round(percentile(figures.added_first_ms, 50), 2),
        "added_first_turn_p95_ms": round(percentile(figures.added_first_ms, 95), 2),
        "idle_ping_p50_ms": round(percentile(figures.ping_ms, 50), 2),
        "idle_ping_p95_ms": round(percentile(figures.ping_ms, 95), 2),
        "fallbacks": dict(figures.fallbacks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--speakers", type=int, default=50, help="connections that talk to NPCs")
    parser.add_argument("--turns", type=int, default=2, help="turns per speaker, one after the other")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=600,
        help="TURN_DEADLINE_GOLD_S for the run: long, so that turns stream instead of ending in barks",
    )
    args = parser.parse_args()
    if not 0 <= args.speakers <= args.connections:
        parser.error("--speakers must be between 0 and --connections")
    django_setup(environ={"TURN_DEADLINE_GOLD_S": str(args.deadline_s)})
    demo_world_ready()

    from console.models import NPC
    from console.models.npcs import NPCStatus
    from console.services.keys import game_key_create

    key = game_key_create(name=f"bench-clients-{time.time_ns()}", scopes=["play", "players"])[1]
    npcs = list(NPC.objects.filter(status=NPCStatus.ACTIVE).order_by("slug").values_list("slug", flat=True))
    with stack_running() as stack:
        url = stack.daphne_start(name="clients", worker=stack.worker_url)
        pid = stack.daphnes[0].pid
        rss_before = _rss_mb(pid)
        figures = asyncio.run(
            _run(
                url=url,
                key=key,
                npcs=npcs,
                connections=args.connections,
                speakers=args.speakers,
                turns=args.turns,
            )
        )
        figures_print(
            {
                "bench": "clients",
                "connections": args.connections,
                "speakers": args.speakers,
                "turns_each": args.turns,
                **figures,
                "daphne_rss_before_mb": round(rss_before, 1),
                "daphne_rss_peak_mb": round(_rss_mb(pid, "VmHWM"), 1),
            }
        )


if __name__ == "__main__":
    main()
