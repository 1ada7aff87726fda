"""factory-boy factories for the console's and memory's models: valid by default; override what a
test needs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.utils import timezone

from console.models import (
    NPC,
    Adapter,
    AdapterStatus,
    AdapterTask,
    Archetype,
    BaseModel,
    Region,
    Subfaction,
    World,
)
from memory.models import MemoryEvent, MemoryEventKind


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct-horse-battery")


class WorldFactory(factory.django.DjangoModelFactory[World]):
    class Meta:
        model = World
        django_get_or_create = ["slug"]

    slug = factory.Sequence(lambda n: f"world-{n}")
    name = factory.Sequence(lambda n: f"World {n}")


class RegionFactory(factory.django.DjangoModelFactory[Region]):
    class Meta:
        model = Region

    world = factory.SubFactory(WorldFactory)
    slug = factory.Sequence(lambda n: f"region-{n}")
    name = factory.Sequence(lambda n: f"Region {n}")


def _barks() -> dict[str, list[str]]:
    return {
        "idle": ["The night is long."],
        "greet": ["Good evening."],
        "alert": ["Who goes there?"],
        "hurt": ["You dare?"],
        "farewell": ["Until the next moon."],
    }


class ArchetypeFactory(factory.django.DjangoModelFactory[Archetype]):
    class Meta:
        model = Archetype

    world = factory.SubFactory(WorldFactory)
    slug = factory.Sequence(lambda n: f"archetype-{n}")
    name = factory.Sequence(lambda n: f"Archetype {n}")
    persona = "You are an ancient vampire noble who never breaks character."
    speech_style = "Formal and slow."
    personality_traits = factory.LazyFunction(lambda: {"cunning": 0.8, "hunger": 0.6})
    lexicon = factory.LazyFunction(lambda: ["nightfall", "my dear guest"])
    allowed_actions = factory.LazyFunction(
        lambda: [
            {"name": "idle", "description": "Stand still."},
            {"name": "talk", "description": "Speak to the player."},
            {"name": "bare_fangs", "description": "Show the fangs as a threat."},
        ]
    )
    emotions = factory.LazyFunction(lambda: ["neutral", "amused", "angry"])
    barks = factory.LazyFunction(_barks)
    content_policy = factory.LazyFunction(
        lambda: {"blocked_topics": ["modern technology"], "blocked_terms": ["AI"]}
    )


class SubfactionFactory(factory.django.DjangoModelFactory[Subfaction]):
    class Meta:
        model = Subfaction

    archetype = factory.SubFactory(ArchetypeFactory)
    slug = factory.Sequence(lambda n: f"subfaction-{n}")
    name = factory.Sequence(lambda n: f"Subfaction {n}")


class NPCFactory(factory.django.DjangoModelFactory[NPC]):
    class Meta:
        model = NPC

    archetype = factory.SubFactory(ArchetypeFactory)
    region = factory.SubFactory(RegionFactory, world=factory.SelfAttribute("..archetype.world"))
    slug = factory.Sequence(lambda n: f"npc-{n}")
    name = factory.Sequence(lambda n: f"NPC {n}")


class BaseModelFactory(factory.django.DjangoModelFactory[BaseModel]):
    class Meta:
        model = BaseModel

    name = factory.Sequence(lambda n: f"base-model-{n}")
    path = "/models/smollm2-135m-instruct"
    parameter_count = 134_515_008
    context_length = 2048


class AdapterFactory(factory.django.DjangoModelFactory[Adapter]):
    class Meta:
        model = Adapter

    archetype = factory.SubFactory(ArchetypeFactory)
    task = AdapterTask.DIALOGUE_STYLE
    version = factory.Sequence(lambda n: n + 1)
    rank = 16
    alpha = 32.0
    base_model = factory.SubFactory(BaseModelFactory)
    status = AdapterStatus.DRAFT


class MemoryEventFactory(factory.django.DjangoModelFactory[MemoryEvent]):
    """An archived turn of count-valerian with alice in session s_1, a minute ago."""

    class Meta:
        model = MemoryEvent

    event_id = factory.LazyFunction(uuid.uuid4)
    kind = MemoryEventKind.TURN
    npc_slug = "count-valerian"
    player_id = "alice"
    session_id = "s_1"
    occurred_at = factory.LazyFunction(lambda: timezone.now() - timedelta(minutes=1))
    payload = factory.LazyFunction(
        lambda: {"player": "Good evening.", "npc": "Welcome.", "emotion": "calm", "action": "bow"}
    )


def suite_base_model(base_model_dir: Path) -> BaseModel:
    """The registry row of the suite's real base model (the converted SmolLM2 folder the vLLM
    worker serves), for tests that train or serve for real."""
    base_model, _ = BaseModel.objects.update_or_create(
        name="smollm2-test",
        defaults={"path": str(base_model_dir), "parameter_count": 134_515_008, "context_length": 8192},
    )
    return base_model
