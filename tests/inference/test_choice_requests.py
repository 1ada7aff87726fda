"""Emotion and action are asked in as few requests as their routes allow (inference.turn.play)."""

from __future__ import annotations

import dataclasses

from console.services.adapters import BASE_MODEL_NAME
from inference.context import TurnContext
from inference.turn.play import choice_requests

CONTEXT = TurnContext(
    npc_slug="choosy",
    npc_name="Choosy",
    archetype_slug="vampire",
    persona="You are a vampire.",
    subfaction_text="",
    npc_card="Your name is Choosy.",
    emotions=("neutral", "angry"),
    actions=("idle", "talk"),
    barks={"greet": ["Hm."]},
    blocked_terms=(),
    routes={
        "dialogue_style": "vampire-voice",
        "emotional_response": BASE_MODEL_NAME,
        "action_policy": BASE_MODEL_NAME,
    },
    model_path="/nowhere",
)


def test_emotion_and_action_on_one_route_are_one_request():
    assert choice_requests(CONTEXT) == [("emotion", "action")]


def test_emotion_and_action_on_different_adapters_are_two_requests():
    routes = {**CONTEXT.routes, "emotional_response": "vampire-emotions"}

    assert choice_requests(dataclasses.replace(CONTEXT, routes=routes)) == [("emotion",), ("action",)]
