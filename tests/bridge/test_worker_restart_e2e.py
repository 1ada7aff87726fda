"""The vLLM worker restarted mid-session, end to end: a real Daphne, a real Celery worker, the
real worker killed (kill -9) and started again while a player keeps talking. Within a minute of
the worker answering again every active adapter is resident, no turn in between ended
`internal`, and the player, still on the same socket, is answered by the adapter again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
from websockets.asyncio.client import connect

from inference.residency import worker_loras
from inference.workers import worker_health

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def _turn(socket, npc_id: str, request_id: str) -> dict:
    """One npc.say; the frame that ends it (turn.end or turn.error)."""
    await socket.send(
        json.dumps({"type": "npc.say", "request_id": request_id, "npc_id": npc_id, "text": "Ahoy!"})
    )
    async with asyncio.timeout(240):
        async for raw in socket:
            frame = json.loads(raw)
            if frame.get("request_id") == request_id and frame["type"] in ("turn.end", "turn.error"):
                return frame
    raise AssertionError(f"the socket closed before {request_id} ended")


def _resident(url: str, names: set[str]) -> bool:
    try:
        return names <= worker_loras(url)
    except Exception:  # noqa: BLE001 - the worker is still coming up
        return False


def test_a_worker_restarted_mid_session_reloads_its_adapters_and_no_turn_ends_internal(
    daphne, speaking_npc, key, celery_worker_process, vllm_worker
):
    npc, lora_name = speaking_npc
    url = vllm_worker.url
    expected = {lora_name}
    assert _resident(url, expected)

    async def scenario() -> tuple[list[dict], float, float]:
        ends: list[dict] = []
        async with connect(daphne, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": "p-restart"}))
            ends.append(await _turn(socket, npc.slug, "before"))

            # The worker dies with its engine (kill -9 of its process group), then starts again.
            assert vllm_worker.process is not None
            os.killpg(os.getpgid(vllm_worker.process.pid), signal.SIGKILL)
            vllm_worker.process.wait()
            restart = asyncio.create_task(asyncio.to_thread(vllm_worker.start))
            number = 0
            while not restart.done():
                number += 1
                ends.append(await _turn(socket, npc.slug, f"down-{number}"))
                await asyncio.sleep(2)  # within the socket's npc.say rate
            await restart
            up_at = time.monotonic()
            # The player keeps talking while residency catches up.
            while not _resident(url, expected):
                assert time.monotonic() - up_at < 60, (
                    f"adapters not resident a minute after the restart: {ends[-3:]}"
                )
                number += 1
                ends.append(await _turn(socket, npc.slug, f"up-{number}"))
                await asyncio.sleep(2)
            resident_after = time.monotonic() - up_at
            await asyncio.sleep(6)  # the bridge's health entry (WORKER_HEALTH_TTL_S) is refreshed
            ends.append(await _turn(socket, npc.slug, "after"))
        return ends, resident_after, up_at

    ends, resident_after, _ = asyncio.run(scenario())

    # Then every turn ended with turn.end (barks while the worker was away), none `internal`
    assert [frame for frame in ends if frame["type"] != "turn.end"] == []
    assert any("worker_down" in frame["fallbacks"] for frame in ends[1:-1])
    # And the adapters were back within a minute, and the adapter answers again on the same socket
    assert resident_after < 60
    assert worker_health(url).healthy
    assert "worker_down" not in ends[-1]["fallbacks"], ends[-1]
    assert not any(reason.startswith("adapter_not_loaded") for reason in ends[-1]["fallbacks"]), ends[-1]
