"""Game websocket fixtures: keys, an NPC, and a communicator speaking to the real ASGI app."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from console.asgi import application
from console.services.keys import game_key_create
from inference.context import turn_context_forget
from inference.workers import worker_mark_down
from tests.factories import NPCFactory

NOWHERE = "http://127.0.0.1:9"  # the discard port: no worker answers, turns fall back to barks


@pytest.fixture(autouse=True)
def _fresh_caches():
    turn_context_forget()
    yield
    turn_context_forget()


@pytest.fixture
def no_worker(settings):
    """Protocol tests run turns without a model: every turn is the worker-down bark."""
    settings.INFERENCE_WORKERS = [NOWHERE]
    worker_mark_down(NOWHERE)


@pytest.fixture
def game_key(db) -> str:
    _, secret = game_key_create(name="test client")
    return secret


@pytest.fixture
def npc(db):
    return NPCFactory(slug="count-test", name="Count Test")


def connect(
    secret: str | None = None, *, path: str = "/ws/game/", headers: list[tuple[bytes, bytes]] | None = None
):
    all_headers = list(headers or [])
    if secret is not None:
        all_headers.append((b"authorization", f"Bearer {secret}".encode()))
    return WebsocketCommunicator(application, path, headers=all_headers)


async def frames_until(
    comm: WebsocketCommunicator, kind: str, *, wait_s: float = 10.0
) -> list[dict[str, Any]]:
    """Every frame received up to and including the first of type `kind`."""
    frames = []
    while True:
        frame = json.loads(await comm.receive_from(timeout=wait_s))
        frames.append(frame)
        if frame["type"] == kind:
            return frames


async def send(comm: WebsocketCommunicator, frame: dict[str, Any]) -> None:
    await comm.send_to(text_data=json.dumps(frame))


async def started(comm: WebsocketCommunicator, player_id: str = "player-1") -> dict[str, Any]:
    connected, code = await comm.connect()
    assert connected, code
    await send(comm, {"type": "session.start", "player_id": player_id})
    ready = json.loads(await comm.receive_from())
    assert ready["type"] == "session.ready", ready
    return ready
