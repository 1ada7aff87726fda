"""A worker killed mid-turn: the player still gets an answer (a bark) within the deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from console.localstack import free_port
from inference.context import TurnContext
from inference.turn.play import turn_run
from inference.workers import WorkerProcess

pytestmark = pytest.mark.e2e

BARKS = {"greet": ["Who disturbs my rest?"], "idle": ["..."], "farewell": ["Begone."]}


def _context(model: str, model_path: str) -> TurnContext:
    return TurnContext(
        npc_slug="doomed",
        npc_name="Doomed",
        archetype_slug="vampire",
        persona="You are a vampire.",
        subfaction_text="",
        npc_card="Your name is Doomed.",
        emotions=("neutral", "angry"),
        actions=("idle", "talk"),
        barks=BARKS,
        blocked_terms=(),
        routes={"dialogue_style": model, "emotional_response": model, "action_policy": model},
        model_path=model_path,
    )


def test_killing_the_worker_mid_turn_yields_a_bark_within_the_deadline(base_model_dir, tmp_path, settings):
    # Given a worker of our own (the session's worker stays untouched) and a turn streaming from it
    worker = WorkerProcess(
        url=f"http://127.0.0.1:{free_port()}", base_model_dir=base_model_dir, log_path=tmp_path / "worker.log"
    )
    worker.start()
    settings.TURN_DEADLINES_S = {"gold": 30.0, "silver": 30.0, "bronze": 0.0}
    context = _context("smollm2-test", str(base_model_dir))
    deltas: list[str] = []
    try:
        assert worker.process is not None

        async def run():
            first_text = asyncio.Event()

            async def collect(piece: str) -> None:
                deltas.append(piece)
                first_text.set()

            async def killer() -> None:
                await first_text.wait()  # the turn is streaming: kill -9 the whole worker now
                os.killpg(os.getpgid(worker.process.pid), signal.SIGKILL)

            kill = asyncio.create_task(killer())
            result = await turn_run(
                context=context,
                player_text="Tell me a long story about your castle.",
                workers=[worker.url],
                tier="gold",
                on_delta=collect,
            )
            kill.cancel()
            return result

        started = time.monotonic()
        result = asyncio.run(run())
        elapsed = time.monotonic() - started
    finally:
        worker.stop()

    # Then the turn ends well inside the deadline, with a bark, and the text is exactly what streamed
    assert elapsed < 30
    assert "worker_down" in result.fallbacks or "deadline" in result.fallbacks
    assert result.text.endswith(tuple(BARKS["farewell"] + BARKS["greet"]))
    assert result.text == "".join(deltas)
    assert result.action in context.actions
