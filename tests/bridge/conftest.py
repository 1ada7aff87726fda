"""Game websocket fixtures: keys, an NPC, a communicator speaking to the real ASGI app, and a
real Daphne process for the end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from console.asgi import application
from console.models import AdapterTask
from console.services.adapters import adapter_import, adapter_lora_name
from console.services.keys import game_key_create
from inference.residency import residency_sync
from inference.workers import worker_mark_down
from tests.factories import ArchetypeFactory, NPCFactory, suite_base_model
from tests.processes import daphne_running, process_running, subprocess_database_env

# What a game server holds (the suite plays many player ids with one key); play-only keys are tested apart.
GAME_SERVER_SCOPES = ["play", "positions", "quests", "players"]
NOWHERE = "http://127.0.0.1:9"  # the discard port: no worker answers, turns fall back to barks


@pytest.fixture
def no_worker(settings):
    """Protocol tests run turns without a model: every turn is the worker-down bark."""
    settings.INFERENCE_WORKERS = [NOWHERE]
    worker_mark_down(NOWHERE)


@pytest.fixture
def game_key(db) -> str:
    _, secret = game_key_create(name="test client", scopes=GAME_SERVER_SCOPES)
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


async def resume_attempt(comm: WebsocketCommunicator, *, session_id: str, player_id: str) -> dict[str, Any]:
    """Connect and ask to resume `session_id` from its start; the server's first answer."""
    await comm.connect()
    resume = {"session_id": session_id, "last_seq": 0}
    await send(comm, {"type": "session.start", "player_id": player_id, "resume": resume})
    frame = json.loads(await comm.receive_from())
    await comm.disconnect()
    return frame


async def started(comm: WebsocketCommunicator, player_id: str = "player-1") -> dict[str, Any]:
    connected, code = await comm.connect()
    assert connected, code
    await send(comm, {"type": "session.start", "player_id": player_id})
    ready = json.loads(await comm.receive_from())
    assert ready["type"] == "session.ready", ready
    return ready


@pytest.fixture(scope="session")
def stack_env(django_db_setup, _worker_process) -> dict[str, str]:
    """The environment of the processes the e2e tests start: the test database, the test Redis
    database and the suite's vLLM worker."""
    return {
        **subprocess_database_env(),
        "TEST_INFERENCE_WORKER": _worker_process.url,
        # Exactness, not speed, is under test: a busy 2-core CPU must not trigger bark fallbacks.
        "TURN_DEADLINE_GOLD_S": "180",
        # The same reply for the same prompt, run after run.
        "TURN_SEED": "11",
    }


# Module scope: a live Celery worker would answer the health checks of later tests.
@pytest.fixture(scope="module")
def celery_worker_process(stack_env) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker as `make run` starts it, on the test broker (Redis database 9)."""
    argv = [sys.executable, "-m", "celery", "-A", "console", "worker", "-Q", "io,celery",
            "--pool=threads", "--concurrency=2", "--loglevel=INFO", "-n", f"e2e{os.getpid()}@%h"]  # fmt: skip
    with process_running("celery", argv, stack_env) as process:
        yield process


@pytest.fixture(scope="module")
def archiver_process(stack_env) -> Iterator[subprocess.Popen[bytes]]:
    """The memory archiver as `make run` starts it."""
    with process_running(
        "archiver", [sys.executable, "manage.py", "run_archiver", "--name", "e2e"], stack_env
    ) as process:
        yield process


@pytest.fixture(scope="session")
def daphne(stack_env) -> Iterator[str]:
    """Daphne on the test database and the suite's vLLM worker, once per test session; its URL."""
    with daphne_running("daphne", stack_env) as url:
        yield url


def _model_npc(base_model_dir: Path, name: str):
    base_model = suite_base_model(base_model_dir)
    archetype = ArchetypeFactory(base_model=base_model, content_policy={"blocked_terms": []})
    return NPCFactory(archetype=archetype, name=name), base_model


@pytest.fixture
def plain_npc(base_model_dir, vllm_worker):
    """An NPC without adapters: the base model speaks with the persona prompt, at length (the
    suite's pirate adapter learnt one-line answers, which make a single delta)."""
    npc, _ = _model_npc(base_model_dir, "Storyteller")
    residency_sync(workers=[vllm_worker.url])
    return npc


@pytest.fixture
def speaking_npc(base_model_dir, trained_adapters, vllm_worker):
    """An NPC whose dialogue runs through the trained pirate adapter, loaded on the worker."""
    npc, base_model = _model_npc(base_model_dir, "Captain")
    archetype = npc.archetype
    adapter = adapter_import(
        path=trained_adapters["pirate"],
        archetype=archetype,
        task=AdapterTask.DIALOGUE_STYLE,
        base_model=base_model,
        activate=True,
    )
    residency_sync(workers=[vllm_worker.url])
    return npc, adapter_lora_name(adapter)


@pytest.fixture
def key(transactional_db) -> str:
    return game_key_create(name="e2e client", scopes=GAME_SERVER_SCOPES)[1]


# Headless Chromium for the browser tests (Debian's package, driven by Playwright).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes say: without the background-networking flags Chromium keeps dialling
# Google's hosts, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "playtest-password-1"  # noqa: S105 - a throwaway account in the test database


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI installs it")
    return CHROMIUM
