"""The turn pipeline (inference.turn): a game socket's turn, npc_say's and a traced turn's replay
all go through turn_take and keep the same trace. The worker's client is a double here (the
process boundary); tests/bridge/test_trace_e2e.py replays a turn on the real worker."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.management import call_command

from console.management.commands import npc_say
from console.models import BaseModel
from console.services.keys import game_key_create
from inference.context import turn_context_build, turn_context_forget
from inference.turn import pipeline, play, replay
from inference.turn.replay import turn_replay
from memory.events import ENTRY_FIELD
from memory.pairs import hot_memory
from tests.bridge.conftest import GAME_SERVER_SCOPES, connect, frames_until, send, started
from tests.factories import ArchetypeFactory, NPCFactory

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = "http://worker"
REPLY = ["Good ", "evening, ", "traveller."]


class _Worker:
    """Answers like vLLM's API would; keeps what each dialogue request sent."""

    def __init__(self) -> None:
        self.dialogues: list[list[dict[str, str]]] = []

    async def stream_chat(self, *, messages: list[dict[str, str]], **request: Any) -> AsyncIterator[str]:
        self.dialogues.append(messages)
        for token in REPLY:
            yield token

    async def complete_json(self, *, schema: dict[str, Any], **request: Any) -> dict[str, Any]:
        kind = next(iter(schema["properties"]))
        return {kind: schema["properties"][kind]["enum"][0]}


@pytest.fixture
def worker(base_model_dir, settings, monkeypatch) -> Iterator[_Worker]:
    settings.INFERENCE_WORKERS = [WORKER]
    double = _Worker()

    async def healthy() -> list[str]:
        return [WORKER]

    monkeypatch.setattr(play, "engine_for", lambda url: double)
    monkeypatch.setattr(pipeline, "workers_healthy_cached", healthy)
    monkeypatch.setattr(replay, "workers_probe_now", lambda: [WORKER])
    monkeypatch.setattr(npc_say, "workers_probe_now", lambda: [WORKER])
    turn_context_forget()
    yield double
    turn_context_forget()
    hot_memory().evict("player-1")  # this process's memory of the pair: later tests start afresh


@pytest.fixture
def npc(base_model_dir):
    base_model = BaseModel.objects.create(
        name="smollm2-pipeline", path=str(base_model_dir), parameter_count=134_515_008, context_length=8192
    )
    return NPCFactory(slug="count-test", archetype=ArchetypeFactory(base_model=base_model))


def _socket_turn(redis_client, npc_id: str, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A turn over the game websocket: its turn.end, and its trace as the remember stage wrote it
    to the archive's stream (in the background, after turn.end: waited for before the socket
    closes, since the test's event loop ends with it)."""
    _, secret = game_key_create(name="pipeline test", scopes=GAME_SERVER_SCOPES)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        comm = connect(secret)
        await started(comm)
        await send(comm, {"type": "npc.say", "request_id": "r1", "npc_id": npc_id, "text": text})
        end = (await frames_until(comm, "turn.end"))[-1]
        for _ in range(200):  # 10 s
            if (trace := _archived_trace(redis_client, end["turn_id"])) is not None:
                break
            await asyncio.sleep(0.05)
        await comm.disconnect()
        assert trace is not None, f"turn {end['turn_id']} never reached the memory stream"
        return end, trace

    return async_to_sync(scenario)()


def _archived_trace(redis_client, turn_id: str) -> dict[str, Any] | None:
    for _, fields in redis_client.xrange(settings.MEMORY_STREAM):
        data = json.loads(fields[ENTRY_FIELD.encode()])["data"]
        if (data.get("trace") or {}).get("turn_id") == turn_id:
            return data["trace"]
    return None


def test_a_websocket_turn_npc_say_and_a_replay_keep_the_same_trace_fields(npc, worker, redis_client):
    end, live = _socket_turn(redis_client, npc.slug, "Who are you?")
    out = io.StringIO()
    call_command("npc_say", npc.slug, "Who are you?", "--trace", stdout=out)
    said = json.loads(out.getvalue()[out.getvalue().index("{") :])

    replayed = async_to_sync(turn_replay)(
        context=turn_context_build(npc_slug=npc.slug), trace=live, player_text="Who are you?"
    )

    assert end["text"] == "".join(REPLY)
    assert live["messages"], "the websocket turn assembled and kept its prompt"
    assert set(replayed.trace) == set(live)
    assert set(said) == set(live)
    assert (replayed.error, replayed.text) == ("", "".join(REPLY))
    # The replay sent the prompt as it was sent then, and says so.
    assert worker.dialogues[-1] == live["messages"]
    assert replayed.trace["messages"] == live["messages"]
    assert (replayed.trace["tier_reason"], replayed.trace["sampling"]["greedy"]) == ("replay", True)
    assert replayed.trace["memory"] == live["memory"] == end["memory"]


def test_a_replay_without_a_worker_keeps_the_trace_fields_and_says_why(
    npc, worker, redis_client, monkeypatch
):
    end, live = _socket_turn(redis_client, npc.slug, "Who are you?")
    monkeypatch.setattr(replay, "workers_probe_now", list)

    replayed = async_to_sync(turn_replay)(
        context=turn_context_build(npc_slug=npc.slug), trace=live, player_text="Who are you?"
    )

    assert replayed.error == "no healthy worker: start one (make run starts it)"
    assert replayed.text == ""
    assert set(replayed.trace) == set(live)


TIMING_PARTS = {"ttft_ms", "total_ms", "memory_ms", "lore_ms", "prompt_ms", "choices_ms"}


def test_a_websocket_turn_times_each_part_in_turn_end_and_its_trace(npc, worker, redis_client):
    end, trace = _socket_turn(redis_client, npc.slug, "Who are you?")

    # Every part ran (a player's turn on a worker): each is measured, none left out.
    assert set(end["timing"]) == TIMING_PARTS
    assert all(isinstance(end["timing"][part], float) for part in TIMING_PARTS), end["timing"]
    assert trace["timing"] == end["timing"]
    # Prompt assembly and the emotion/action requests are parts of the turn's total.
    timing = end["timing"]
    assert timing["prompt_ms"] + timing["choices_ms"] <= timing["total_ms"]
