"""What the websocket bridge adds to a turn: the same prompts through Daphne and directly.

    python -m bench.bridge [--prompts 8] [--rounds 3] [--npc count-valerian]

One run starts a vLLM worker, a Daphne process (as `make run` does) and, in this process,
the turn service. Every prompt is sent both ways, in alternating order so machine noise falls
on both paths:

- websocket: a `websockets` client sends `npc.say` to Daphne and times the first `turn.delta`
  (TTFT) and `turn.end` (total), from just before the send;
- direct: this process calls `inference.turn.play.turn_run` against the same worker with the same
  context and prompt, timing the first delta and the return.

Turns are seeded (TURN_SEED) so both paths generate the same reply token for token. Also
reported: the bridge's own share, i.e. the client's TTFT minus the TTFT that the turn service
measured inside Daphne (`turn.end.timing.ttft_ms`), which leaves out the model entirely.

A second Daphne whose only worker is the discard port makes every turn an instant bark: there
the round trip is the bridge and nothing else ("bark" in the output).

Runs on bench.stack (its own database with the demo world). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.stack import (
    NOWHERE,
    PROMPTS,
    demo_world_ready,
    django_setup,
    figures_print,
    percentile,
    stack_running,
)

if TYPE_CHECKING:
    from inference.context import TurnContext

SEED = 1234


@dataclass
class PathFigures:
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {
            "ttft_p50_ms": round(percentile(self.ttft_ms, 50), 1),
            "ttft_p95_ms": round(percentile(self.ttft_ms, 95), 1),
            "total_p50_ms": round(percentile(self.total_ms, 50), 1),
            "total_p95_ms": round(percentile(self.total_ms, 95), 1),
        }


async def websocket_turn(url: str, key: str, npc: str, text: str) -> tuple[float, float, dict]:
    """One turn over the websocket on a fresh session (no history): client TTFT, total, turn.end."""
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
        # A new player each time: no memory of earlier turns, so the prompt is the direct path's.
        player = f"bench-{time.time_ns()}"
        await socket.send(json.dumps({"type": "session.start", "player_id": player}))
        ready = json.loads(await socket.recv())
        assert ready["type"] == "session.ready", ready
        started = time.perf_counter()
        await socket.send(json.dumps({"type": "npc.say", "request_id": "r1", "npc_id": npc, "text": text}))
        ttft = None
        async for raw in socket:
            frame = json.loads(raw)
            if frame["type"] == "turn.delta" and ttft is None:
                ttft = (time.perf_counter() - started) * 1000
            elif frame["type"] == "turn.end":
                total = (time.perf_counter() - started) * 1000
                assert ttft is not None, "turn.end before any turn.delta"
                return ttft, total, frame
            elif frame["type"] in ("turn.error", "error"):
                raise RuntimeError(f"the bridge answered {frame}")
    raise RuntimeError("the socket closed before turn.end")


async def direct_turn(context: TurnContext, worker: str, text: str) -> tuple[float, float, str]:
    from inference.turn.play import turn_run

    started = time.perf_counter()
    first: list[float] = []

    async def on_delta(piece: str) -> None:
        if not first:
            first.append((time.perf_counter() - started) * 1000)

    workers = [worker] if worker else []  # none: the turn is a bark, as when every worker is down
    result = await turn_run(context=context, player_text=text, workers=workers, on_delta=on_delta)
    return first[0], (time.perf_counter() - started) * 1000, result.text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prompts", type=int, default=8, help=f"distinct player lines (at most {len(PROMPTS)})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="times each prompt is sent each way")
    parser.add_argument("--npc", default="count-valerian")
    parser.add_argument(
        "--bark-turns", type=int, default=200, help="model-less turns for the bridge-only figures"
    )
    args = parser.parse_args()
    # Seeded turns: both paths generate the same reply. A busy 2-core worker takes seconds per
    # turn; no turn may end early with a bark.
    django_setup(environ={"TURN_SEED": str(SEED), "TURN_DEADLINE_GOLD_S": "600"})
    demo_world_ready()

    from console.services.keys import game_key_create
    from inference.context import turn_context_build

    key = game_key_create(name=f"bench-bridge-{time.time_ns()}", scopes=["play", "players"])[1]
    context = turn_context_build(npc_slug=args.npc)
    with stack_running() as stack:
        model_url = stack.daphne_start(name="model", worker=stack.worker_url)
        bark_url = stack.daphne_start(name="bark", worker=NOWHERE)
        figures = asyncio.run(
            _measure(
                ws_url=model_url,
                key=key,
                npc=args.npc,
                context=context,
                worker=stack.worker_url,
                prompts=PROMPTS[: args.prompts],
                rounds=args.rounds,
            )
        )
        figures["bark"] = asyncio.run(
            _measure_barks(ws_url=bark_url, key=key, npc=args.npc, context=context, turns=args.bark_turns)
        )
    figures_print(figures)


async def _measure(
    *, ws_url: str, key: str, npc: str, context: TurnContext, worker: str, prompts: list[str], rounds: int
) -> dict:
    websocket, direct = PathFigures(), PathFigures()
    bridge_share: list[float] = []
    added_ttft: list[float] = []
    added_total: list[float] = []
    same_text = 0
    # Unmeasured: one turn over the websocket (Daphne's caches), then every prompt once, so
    # that vLLM's prefix cache holds all of them and neither path gets it first.
    await websocket_turn(ws_url, key, npc, "Hello.")
    for text in prompts:
        await direct_turn(context, worker, text)
    runs = [(round_index, text) for round_index in range(rounds) for text in prompts]
    for index, (_, text) in enumerate(runs):
        if index % 2 == 0:
            ws = await websocket_turn(ws_url, key, npc, text)
            dr = await direct_turn(context, worker, text)
        else:
            dr = await direct_turn(context, worker, text)
            ws = await websocket_turn(ws_url, key, npc, text)
        ws_ttft, ws_total, end = ws
        dr_ttft, dr_total, dr_text = dr
        websocket.ttft_ms.append(ws_ttft)
        websocket.total_ms.append(ws_total)
        direct.ttft_ms.append(dr_ttft)
        direct.total_ms.append(dr_total)
        added_ttft.append(ws_ttft - dr_ttft)
        added_total.append(ws_total - dr_total)
        bridge_share.append(ws_ttft - end["timing"]["ttft_ms"])
        same_text += end["text"] == dr_text
        line = f"ws {ws_ttft:.0f}/{ws_total:.0f} ms, direct {dr_ttft:.0f}/{dr_total:.0f} ms"
        print(f"{index + 1}/{len(runs)} {line}", file=sys.stderr)
    ws_summary, direct_summary = websocket.summary(), direct.summary()
    return {
        "bench": "bridge",
        "turns": len(runs),
        "same_reply_share": round(same_text / len(runs), 3),
        "ttft_ratio_p50": round(ws_summary["ttft_p50_ms"] / direct_summary["ttft_p50_ms"], 3),
        "total_ratio_p50": round(ws_summary["total_p50_ms"] / direct_summary["total_p50_ms"], 3),
        "added_ttft_p50_ms": round(percentile(added_ttft, 50), 1),
        "added_ttft_p95_ms": round(percentile(added_ttft, 95), 1),
        "added_total_p95_ms": round(percentile(added_total, 95), 1),
        "bridge_share_p50_ms": round(percentile(bridge_share, 50), 2),
        "bridge_share_p95_ms": round(percentile(bridge_share, 95), 2),
        "websocket": ws_summary,
        "direct": direct_summary,
    }


async def _measure_barks(*, ws_url: str, key: str, npc: str, context: TurnContext, turns: int) -> dict:
    """Model-less turns both ways: what the websocket, Daphne and the session cost on their own."""
    websocket, direct = PathFigures(), PathFigures()
    await websocket_turn(ws_url, key, npc, "Hello.")
    for index in range(turns):
        ws_ttft, ws_total, _ = await websocket_turn(ws_url, key, npc, PROMPTS[index % len(PROMPTS)])
        dr_ttft, dr_total, _ = await direct_turn(context, "", PROMPTS[index % len(PROMPTS)])
        websocket.ttft_ms.append(ws_ttft)
        websocket.total_ms.append(ws_total)
        direct.ttft_ms.append(dr_ttft)
        direct.total_ms.append(dr_total)
    ws_summary, direct_summary = websocket.summary(), direct.summary()
    return {
        "turns": turns,
        "added_ttft_p50_ms": round(ws_summary["ttft_p50_ms"] - direct_summary["ttft_p50_ms"], 2),
        "added_ttft_p95_ms": round(ws_summary["ttft_p95_ms"] - direct_summary["ttft_p95_ms"], 2),
        "added_total_p95_ms": round(ws_summary["total_p95_ms"] - direct_summary["total_p95_ms"], 2),
        "websocket": ws_summary,
        "direct": direct_summary,
    }


if __name__ == "__main__":
    main()
