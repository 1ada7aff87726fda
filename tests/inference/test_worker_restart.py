"""A restarted vLLM worker holds no adapters: residency is synced every minute and as soon as a
worker is seen coming back, and until then a turn on it is played by the base model, which every
worker serves under BASE_MODEL_NAME from its start, never an exception that ends the turn."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from django.conf import settings

from console.services.adapters import BASE_MODEL_NAME
from inference.context import TurnContext
from inference.residency import adapter_unload, residency_sync, worker_loras
from inference.turn.play import turn_run
from inference.workers import worker_mark_down, workers_healthy_cached
from tests.factories import suite_base_model

BARKS = {"greet": ["Who disturbs my rest?"], "farewell": ["Begone."]}


def _context(model_path: str, *, dialogue: str) -> TurnContext:
    return TurnContext(
        npc_slug="restarted",
        npc_name="Restarted",
        archetype_slug="vampire",
        persona="You are a vampire.",
        subfaction_text="",
        npc_card="Your name is Restarted.",
        emotions=("neutral", "angry"),
        actions=("idle", "talk"),
        barks=BARKS,
        blocked_terms=(),
        routes={"dialogue_style": dialogue, "emotional_response": "base", "action_policy": "base"},
        model_path=model_path,
    )


def test_beat_syncs_residency_every_minute():
    entries = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values()
               if entry["task"] == "inference.tasks.residency_sync_task"]  # fmt: skip
    assert len(entries) == 1
    assert float(entries[0]["schedule"]) <= 60


def _queued_tasks(redis_client, queue: str = "io") -> list[str]:
    return [json.loads(raw)["headers"]["task"] for raw in redis_client.lrange(queue, 0, -1)]


@pytest.mark.e2e
def test_a_worker_seen_coming_back_up_queues_a_residency_sync(vllm_worker, redis_client, settings):
    # Given the turn path last saw the worker down (it restarted, or failed a turn)
    settings.WORKER_HEALTH_TTL_S = 0.0
    url = vllm_worker.url
    worker_mark_down(url)
    assert _queued_tasks(redis_client) == []

    # When its next health probe finds it up
    async def until_up() -> None:
        deadline = time.monotonic() + 10
        while await workers_healthy_cached([url]) != [url]:
            assert time.monotonic() < deadline, "the worker's probe never found it up"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the sync is queued from a thread

    asyncio.run(until_up())

    # Then a residency sync is queued for the Celery workers
    assert _queued_tasks(redis_client) == ["inference.tasks.residency_sync_task"]


@pytest.mark.e2e
@pytest.mark.parametrize("dialogue", [BASE_MODEL_NAME, "an-adapter-it-never-loaded"])
def test_a_worker_without_adapters_plays_the_turn_through_the_base_model(
    db, base_model_dir, vllm_worker, dialogue
):
    # Given the worker as it comes back from a restart: no adapter loaded
    url = vllm_worker.url
    suite_base_model(base_model_dir)
    for lora_name in worker_loras(url):
        adapter_unload(url, lora_name=lora_name)
    try:
        # When a turn runs on it through the base model, or through an adapter it does not know
        result = asyncio.run(
            turn_run(
                context=_context(str(base_model_dir), dialogue=dialogue),
                player_text="Good evening.",
                workers=[url],
                greedy=True,
            )  # fmt: skip
        )
    finally:
        residency_sync(workers=[url])  # the next tests find the worker as they expect

    # Then the base model answers (no bark, no worker fault), and an unknown adapter is named
    assert result.text
    assert result.text not in BARKS["greet"]
    assert "worker_down" not in result.fallbacks
    assert ("adapter_not_loaded:dialogue_style" in result.fallbacks) == (dialogue != BASE_MODEL_NAME)
    assert result.adapters["dialogue_style"] == BASE_MODEL_NAME
