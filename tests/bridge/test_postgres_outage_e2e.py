"""Postgres stopped for 10 s in the middle of a conversation: the NPC keeps answering, token by
token and with its memory of the player, and once Postgres is back the archive catches up with
every turn.

The stack runs on a Postgres cluster of the test's own (the embedded server, in its own data
directory), so stopping it touches nothing else: Daphne, the archiver and the suite's vLLM
worker with the base model, as `make run` starts them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.conf import settings
from websockets.asyncio.client import connect

from console import localstack
from tests.processes import daphne_running, process_running

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

OUTAGE_S = 10.0
PLAYER = "p-outage"

# Run inside the outage stack's database: the model, an NPC and a game key.
_SEED = """
import django; django.setup()
from console.models import BaseModel
from console.services.keys import game_key_create
from tests.factories import ArchetypeFactory, NPCFactory
base = BaseModel.objects.create(name="smollm2-test", path={path!r}, parameter_count=134_515_008,
                                context_length=8192)
npc = NPCFactory(archetype=ArchetypeFactory(base_model=base, content_policy={{"blocked_terms": []}}),
                 name="Innkeeper")
from inference.residency import residency_sync
from django.conf import settings
residency_sync(workers=settings.INFERENCE_WORKERS)  # the worker then serves "base", the zero adapter
print(npc.slug, game_key_create(name="outage client", scopes=["play", "players"])[1])
"""


@pytest.fixture
def own_postgres() -> Iterator[tuple[object, str]]:
    """An embedded Postgres cluster of the test's own: its data directory and URL."""
    # Under var/, not pytest's tmp_path: as root the server runs as a system user, which
    # cannot enter pytest's private temporary directories.
    pgdata = localstack.VAR_DIR / f"pg-outage-{int(time.time())}"
    url = localstack.embedded_postgres_url(pgdata=pgdata, database="revenant_outage")
    try:
        yield pgdata, url
    finally:
        localstack.embedded_postgres_stop(pgdata=pgdata)
        shutil.rmtree(pgdata, ignore_errors=True)


def _archived_turns(url: str) -> int:
    with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM memory_memoryevent WHERE player_id = %s AND kind = 'turn'", [PLAYER]
        ).fetchone()
    return int(row[0]) if row else 0


def test_turns_stream_with_memory_while_postgres_is_down_and_the_archive_catches_up(
    stack_env, own_postgres, base_model_dir, vllm_worker
):
    pgdata, url = own_postgres
    env = {**stack_env, "DATABASE_URL": url, "MEMORY_STREAM": f"memory:events:outage-{time.time():.0f}"}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=env, check=True,
                   cwd=localstack.PROJECT_DIR, capture_output=True, timeout=300)  # fmt: skip
    seed = [sys.executable, "-c", _SEED.format(path=str(base_model_dir))]
    seeded = subprocess.run(
        seed, env=env, check=True, cwd=localstack.PROJECT_DIR, capture_output=True, text=True
    )
    npc, key = seeded.stdout.split()
    archiver_argv = [sys.executable, "manage.py", "run_archiver", "--name", "outage"]

    async def say(socket, request_id: str, text: str) -> list[dict]:
        say = {"type": "npc.say", "request_id": request_id, "npc_id": npc, "text": text}
        await socket.send(json.dumps(say))
        frames: list[dict] = []
        async with asyncio.timeout(240):
            while not frames or frames[-1]["type"] not in ("turn.end", "turn.error", "error"):
                frames.append(json.loads(await socket.recv()))
        await socket.send(json.dumps({"type": "ack", "seq": frames[-1]["seq"]}))
        return frames

    async def conversation(daphne: str) -> dict[str, list[list[dict]]]:
        turns: dict[str, list[list[dict]]] = {"before": [], "during": [], "after": []}
        headers = {"Authorization": f"Bearer {key}"}
        async with connect(daphne, additional_headers=headers) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": PLAYER}))
            assert json.loads(await socket.recv())["type"] == "session.ready"
            turns["before"].append(await say(socket, "r1", "Good evening. I brought you a bottle of wine."))

            stopped_at = time.monotonic()
            assert localstack.embedded_postgres_stop(pgdata=pgdata)
            number = 2
            while not turns["during"] or time.monotonic() - stopped_at < OUTAGE_S:
                turns["during"].append(await say(socket, f"r{number}", "Tell me about this place."))
                assert turns["during"][-1][-1]["type"] == "turn.end", turns["during"][-1][-1]
                number += 1
            assert localstack.embedded_postgres_url(pgdata=pgdata, database="revenant_outage") == url

            turns["after"].append(await say(socket, f"r{number}", "Thank you, good night."))
        # A new player after the outage: their key is checked in Postgres, on a pooled
        # connection that the restart killed (the pool must notice, not fail the handshake).
        async with connect(daphne, additional_headers=headers) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": "p-after"}))
            turns["new_player"] = [[json.loads(await socket.recv())]]
        return turns

    with (
        daphne_running("outage-daphne", env) as daphne,
        process_running("outage-archiver", archiver_argv, env),
    ):
        turns = asyncio.run(conversation(daphne))
        said = sum(len(turns[phase]) for phase in ("before", "during", "after"))
        deadline = time.monotonic() + 60
        while _archived_turns(url) < said and time.monotonic() < deadline:
            time.sleep(0.5)
        archived = _archived_turns(url)

    for frames in turns["during"]:
        end = frames[-1]
        assert end["type"] == "turn.end", end
        assert sum(1 for frame in frames if frame["type"] == "turn.delta") >= 1  # streamed
        assert "worker_down" not in end["fallbacks"]
        # The NPC remembered the player's earlier turns, from this server's memory.
        assert end["memory"]["source"] == "hot"
        assert end["memory"]["turns"] >= 1
    assert turns["after"][0][-1]["type"] == "turn.end"
    assert turns["after"][0][-1]["memory"]["turns"] == min(said - 1, settings.BRIDGE_HISTORY_TURNS)
    assert archived == said  # every turn, the ones spoken during the outage too, exactly once
    assert turns["new_player"][0][0]["type"] == "session.ready"
