"""Token usage of a turn through the real worker: what turn.end, the trace and the ops cost tables
count. A reply the guard cuts closes its stream early, before the worker's final usage chunk."""

from __future__ import annotations

import asyncio

import pytest

from inference.context import TurnContext
from inference.engine import EngineClient, StreamUsage
from inference.residency import residency_sync
from inference.turn.play import turn_result_payload, turn_run
from tests.factories import suite_base_model

pytestmark = pytest.mark.e2e

# Words every English reply holds: the guard cuts the reply at the first one and closes the stream.
COMMON_WORDS = ("the", "a", "i", "you", "and", "to", "of", "is", "my", "me", "it", "in", "your", "are", "am")


def _context(model_path: str, *, blocked_terms: tuple[str, ...] = ()) -> TurnContext:
    return TurnContext(
        npc_slug="counter",
        npc_name="Counter",
        archetype_slug="vampire",
        persona="You are a vampire.",
        subfaction_text="",
        npc_card="Your name is Counter.",
        emotions=("neutral", "angry"),
        actions=("idle", "talk"),
        barks={"greet": ["Who disturbs my rest?"], "farewell": ["Begone."]},
        blocked_terms=blocked_terms,
        routes={"dialogue_style": "base", "emotional_response": "base", "action_policy": "base"},
        model_path=model_path,
    )


def test_a_stream_closed_early_still_reports_its_usage(vllm_worker):
    # Given a stream from the real worker that the caller stops reading after its first delta
    async def first_delta_only() -> StreamUsage:
        engine = EngineClient(vllm_worker.url)
        usage = StreamUsage()
        try:
            async for _ in engine.stream_chat(
                model=vllm_worker.served_name, messages=[{"role": "user", "content": "Tell me a story."}],
                max_tokens=64, temperature=0.0, usage=usage,
            ):  # fmt: skip
                break
        finally:
            await engine.close()
        return usage

    # When it is closed, Then the tokens used so far are known
    usage = asyncio.run(first_delta_only())
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0


@pytest.fixture
def base_adapter_worker(db, base_model_dir, vllm_worker) -> str:
    """The session's worker with the zero "base" adapter every turn request goes through."""
    suite_base_model(base_model_dir)
    residency_sync(workers=[vllm_worker.url])
    return vllm_worker.url


@pytest.mark.parametrize("blocked_terms", [(), COMMON_WORDS], ids=["whole-reply", "cut-by-the-guard"])
def test_a_turn_through_the_worker_counts_its_tokens(base_adapter_worker, base_model_dir, blocked_terms):
    # Given a turn context on the base model, with or without words that make the guard cut it
    context = _context(str(base_model_dir), blocked_terms=blocked_terms)

    # When a turn runs on the real worker
    result = asyncio.run(
        turn_run(
            context=context,
            player_text="Tell me about your castle.",
            workers=[base_adapter_worker],
            greedy=True,
        )  # fmt: skip
    )

    # Then its result, and the payload turn.end, the trace and the cost tables read, count its tokens
    assert "worker_down" not in result.fallbacks, result.fallbacks
    payload = turn_result_payload(result)
    assert payload["usage"]["prompt_tokens"] > 0
    assert payload["usage"]["completion_tokens"] > 0
    if blocked_terms:
        assert "guardrail" in result.fallbacks
