"""The order of a turn's requests to its worker (a double of the worker's client; the real
worker runs the same turns in test_turns_e2e)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from console.models import BaseModel
from inference.context import turn_context_build
from inference.turn import play
from inference.turn.play import turn_run
from tests.factories import ArchetypeFactory, NPCFactory

pytestmark = pytest.mark.django_db


class _RecordingEngine:
    """Answers like vLLM's API would, and writes down when each request arrives."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def stream_chat(self, **request: Any) -> AsyncIterator[str]:
        self.events.append("dialogue requested")
        await asyncio.sleep(0.05)  # prefill
        for token in ["Good ", "evening, ", "traveller. ", "The night ", "is young ", "and so ", "are you."]:
            self.events.append("dialogue token")
            yield token
            await asyncio.sleep(0.01)

    async def complete_json(self, *, schema: dict[str, Any], **request: Any) -> dict[str, Any]:
        kinds = list(schema["properties"])
        self.events.append(f"{'+'.join(kinds)} requested")
        return {kind: schema["properties"][kind]["enum"][0] for kind in kinds}


def test_emotion_and_action_are_asked_after_the_dialogues_first_token(base_model_dir, monkeypatch):
    base_model = BaseModel.objects.create(
        name="smollm2-order", path=str(base_model_dir), parameter_count=134_515_008, context_length=8192
    )
    npc = NPCFactory(archetype=ArchetypeFactory(base_model=base_model))
    context = turn_context_build(npc_slug=npc.slug)
    events: list[str] = []
    monkeypatch.setattr(play, "engine_for", lambda url: _RecordingEngine(events))

    result = asyncio.run(turn_run(context=context, player_text="Hello?", workers=["http://worker"]))

    assert result.text == "Good evening, traveller. The night is young and so are you."
    assert events[:2] == ["dialogue requested", "dialogue token"]
    # Both tasks route to the base model here: one request asks for both, once the first token is out.
    assert [event for event in events if event.endswith("requested")] == [
        "dialogue requested",
        "emotion+action requested",
    ]
    assert events.index("emotion+action requested") > events.index("dialogue token")
    assert result.emotion == context.emotions[0]
    assert result.action == context.actions[0]
