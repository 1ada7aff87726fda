"""The game websocket end to end: a real Daphne (started like `make run` does), a real
`websockets` client, the real vLLM worker with a real LoRA adapter, Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from console import localstack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _frames_until(socket, kind: str, *, into: list | None = None) -> list[dict]:
    frames = [] if into is None else into
    async with asyncio.timeout(240):
        async for raw in socket:
            frames.append(json.loads(raw))
            if frames[-1]["type"] == kind:
                return frames
    raise AssertionError(f"socket closed before {kind}: {frames[-3:]}")


def test_reference_client_streams_a_turn_through_daphne_and_the_adapter(daphne, speaking_npc, key):
    npc, lora_name = speaking_npc

    completed = subprocess.run(
        [sys.executable, "-m", "bridge.client", "--npc", npc.slug, "Who are you?"],
        env={**os.environ, "REVENANT_GAME_KEY": key, "REVENANT_WS_URL": daphne},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=localstack.PROJECT_DIR,
    )

    assert completed.returncode == 0, completed.stderr
    header, _, rest = completed.stdout.partition("\n")
    assert header == f"[{npc.slug} · gold · {lora_name}]"
    reply, _, summary = rest.rpartition("\n\nemotion: ")
    assert "arr" in reply.lower()  # the pirate adapter spoke (seeded: the same reply every run)
    emotion = summary.split()[0]
    action = summary.split("action: ")[1].split()[0]
    assert emotion in npc.archetype.emotions
    assert action in npc.archetype.action_names
    # Only the two tasks without an adapter fell back (to the base model), nothing else.
    assert (
        summary.split("fallbacks: ")[1].strip()
        == "adapter_missing:emotional_response, adapter_missing:action_policy"
    )


def test_deltas_concatenate_to_the_final_text_with_contiguous_seq(daphne, plain_npc, key):
    npc = plain_npc

    async def scenario():
        async with connect(daphne, additional_headers=_auth(key)) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": "p1"}))
            await socket.send(
                json.dumps(
                    {
                        "type": "npc.say",
                        "request_id": "r1",
                        "npc_id": npc.slug,
                        "text": "Tell me about yourself.",
                    }
                )
            )
            return await _frames_until(socket, "turn.end")

    frames = asyncio.run(scenario())

    deltas = [frame["text"] for frame in frames if frame["type"] == "turn.delta"]
    assert len(deltas) > 3
    assert frames[-1]["text"] == "".join(deltas)
    assert [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1))
    assert frames[-1]["usage"]["completion_tokens"] > 0
    assert frames[-1]["timing"]["ttft_ms"] < frames[-1]["timing"]["total_ms"]


def _running_requests(worker_url: str) -> float:
    metrics = httpx.get(f"{worker_url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:num_requests_running")
    )


def _r1_outcome(frames: list[dict], request_id: str) -> dict | None:
    """The frame that ended `request_id`: turn.end, turn.error, or the error for a cancel that
    came after the turn had already ended."""
    for frame in frames:
        if frame.get("request_id") == request_id and frame["type"] in ("turn.end", "turn.error", "error"):
            if frame["type"] == "turn.error" and frame["code"] == "busy":
                continue
            return frame
    return None


def test_second_say_to_a_speaking_npc_is_busy_and_cancel_stops_generation_on_the_worker(
    daphne, speaking_npc, key, vllm_worker
):
    npc, _ = speaking_npc

    async def attempt(socket, request_id: str) -> tuple[list[dict], dict]:
        say = {"type": "npc.say", "request_id": request_id, "npc_id": npc.slug}
        say["text"] = "Tell me a long tale."
        await socket.send(json.dumps(say))
        frames = await _frames_until(socket, "turn.delta")
        # The second say and the cancel go out back to back: a reply that ends on its own a few
        # tokens after the first delta must not outrun the cancel (the CI machine is slower).
        await socket.send(json.dumps({**say, "request_id": request_id + "-again"}))
        await socket.send(json.dumps({"type": "npc.cancel", "request_id": request_id}))
        async with asyncio.timeout(240):
            while (outcome := _r1_outcome(frames, request_id)) is None or not any(
                frame.get("request_id") == request_id + "-again" for frame in frames
            ):
                frames.append(json.loads(await socket.recv()))
        return frames, outcome

    async def scenario():
        async with connect(daphne, additional_headers=_auth(key)) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": "p-cancel"}))
            await _frames_until(socket, "session.ready")
            # A reply that ends by itself before the cancel arrives is not a failure of cancel:
            # try again (each attempt streams at least one delta first).
            for number in range(4):
                frames, outcome = await attempt(socket, f"r{number}")
                if outcome["type"] == "turn.error":
                    break
            waited = 0.0
            while _running_requests(vllm_worker.url) > 0 and waited < 5:
                await asyncio.sleep(0.1)
                waited += 0.1
            return frames, outcome, f"r{number}", _running_requests(vllm_worker.url)

    frames, cancelled, request_id, running_after = asyncio.run(scenario())

    busy = next(frame for frame in frames if frame.get("request_id") == request_id + "-again")
    assert (busy["type"], busy["code"]) == ("turn.error", "busy")
    assert (cancelled["type"], cancelled["code"]) == ("turn.error", "cancelled")
    assert cancelled["request_id"] == request_id
    assert running_after == 0  # the dialogue and its emotion/action requests were aborted on the worker


def test_resume_after_an_abrupt_disconnect_mid_turn_continues_on_the_new_socket(daphne, speaking_npc, key):
    npc, _ = speaking_npc

    async def scenario():
        first = await connect(daphne, additional_headers=_auth(key))
        await first.send(json.dumps({"type": "session.start", "player_id": "p1"}))
        say = {"type": "npc.say", "request_id": "r1", "npc_id": npc.slug, "text": "Tell me of the sea."}
        await first.send(json.dumps(say))
        # One delta, then the connection dies: a reply may be a single delta long (the pirate
        # adapter's often are), so waiting for a second one could outlast the turn.
        seen = await _frames_until(first, "turn.delta")
        first.transport.abort()  # no close handshake: the connection just dies
        async with connect(daphne, additional_headers=_auth(key)) as second:
            resume = {"session_id": seen[0]["session_id"], "last_seq": seen[-1]["seq"]}
            await second.send(json.dumps({"type": "session.start", "player_id": "p1", "resume": resume}))
            after = await _frames_until(second, "turn.end")
        return seen, after

    seen, after = asyncio.run(scenario())

    frames = seen + after  # the second session.ready is numbered too, after the replayed frames
    assert [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1))  # no gap, no duplicate
    deltas = "".join(frame["text"] for frame in frames if frame["type"] == "turn.delta")
    assert after[-1]["text"] == deltas


def test_daphne_drops_an_oversize_frame_and_refuses_a_bad_key(daphne, key, settings):
    async def scenario():
        async with connect(daphne, additional_headers=_auth(key), max_size=None) as socket:
            await socket.send("x" * (settings.BRIDGE_MAX_FRAME_BYTES + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await socket.recv()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(daphne, additional_headers=_auth("rvk_" + "0" * 43)):
                pass
        return closed.value, refused.value.response.status_code

    closed, refused_status = asyncio.run(scenario())

    # Autobahn drops the TCP connection on an oversize message: no close frame (1006 for the client).
    assert isinstance(closed, ConnectionClosedError)
    assert closed.rcvd is None
    assert refused_status == 403
