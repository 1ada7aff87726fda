"""The models' rules: each bad value is rejected with a message naming the field and the rule."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from console.models import Adapter, AdapterScope, AdapterStatus, AdapterTask
from tests.factories import (
    AdapterFactory,
    ArchetypeFactory,
    BaseModelFactory,
    NPCFactory,
    RegionFactory,
    SubfactionFactory,
)

pytestmark = pytest.mark.django_db

ACTIVE_KWARGS = {"status": AdapterStatus.ACTIVE, "artifact_path": "/adapters/a", "sha256": "a" * 64}


def _errors(instance) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        instance.full_clean()
    return info.value.message_dict


def test_valid_archetype_passes_full_clean():
    ArchetypeFactory.build(world=ArchetypeFactory().world).full_clean()


def test_action_name_that_is_not_a_slug_is_rejected_with_the_rule():
    archetype = ArchetypeFactory()
    archetype.allowed_actions = [{"name": "Bare Fangs!", "description": "Show fangs."}]

    errors = _errors(archetype)

    assert "allowed_actions" in errors
    assert "'Bare Fangs!' is not a valid name" in errors["allowed_actions"][0]
    assert "snake_case" in errors["allowed_actions"][0]


def test_duplicate_action_and_missing_description_are_both_reported():
    archetype = ArchetypeFactory()
    archetype.allowed_actions = [
        {"name": "idle", "description": "Stand."},
        {"name": "idle", "description": ""},
    ]

    messages = _errors(archetype)["allowed_actions"]

    assert any("listed twice" in message for message in messages)
    assert any("needs a description" in message for message in messages)


@pytest.mark.parametrize("score", [1.4, -0.1, "high", True])
def test_trait_outside_its_range_or_not_a_number_is_rejected(score):
    archetype = ArchetypeFactory()
    archetype.personality_traits = {"cunning": score}

    message = _errors(archetype)["personality_traits"][0]

    assert "'cunning'" in message


def test_trait_message_states_the_range():
    archetype = ArchetypeFactory()
    archetype.personality_traits = {"hunger": 1.4}

    assert _errors(archetype)["personality_traits"] == [
        "Trait 'hunger' is 1.4; each trait must be between 0 and 1."
    ]


def test_emotions_must_include_neutral():
    archetype = ArchetypeFactory()
    archetype.emotions = ["angry"]

    assert "Emotions must include neutral." in _errors(archetype)["emotions"]


def test_barks_need_every_situation_and_short_lines():
    archetype = ArchetypeFactory()
    archetype.barks = {"idle": ["x" * 500], "shout": ["hey"]}

    messages = _errors(archetype)["barks"]

    assert any("Unknown bark situations: shout" in message for message in messages)
    assert any("'greet'" in message for message in messages)
    assert any("at most 160 characters" in message for message in messages)


def test_content_policy_rejects_unknown_keys():
    archetype = ArchetypeFactory()
    archetype.content_policy = {"blocked": ["x"]}

    assert "content_policy" in _errors(archetype)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"gates": {"dialogue_style": {"persona_consistency": 0.8}}, "lore_in_dialogue": False}, None),
        ({"gates": {"singing": {"persona_consistency": 0.8}}}, "unknown task 'singing'"),
        ({"gates": {"dialogue_style": {"charm": 0.8}}}, "Gate metric 'charm'"),
        ({"gates": {"action_policy": {"action_validity": 1.5}}}, "a number from 0 to 1"),
        ({"gates": {"action_policy": {}}}, "non-empty"),
        ({"lore_in_dialogue": "no"}, "true or false"),
    ],
)
def test_content_policy_gates_and_lore_switch_are_checked(policy, message):
    archetype = ArchetypeFactory()
    archetype.content_policy = {"blocked_terms": ["AI"], **policy}

    if message is None:
        archetype.full_clean()  # accepted
    else:
        assert any(message in text for text in _errors(archetype)["content_policy"])


def test_empty_persona_is_refused_by_the_database_too():
    archetype = ArchetypeFactory()

    with pytest.raises(IntegrityError), transaction.atomic():
        type(archetype).objects.filter(pk=archetype.pk).update(persona="")


def test_npc_subfaction_must_belong_to_its_archetype():
    npc = NPCFactory()
    npc.subfaction = SubfactionFactory()  # of another archetype

    message = _errors(npc)["subfaction"][0]

    assert "pick one of this archetype's subfactions" in message


def test_npc_region_must_be_in_the_archetype_world():
    npc = NPCFactory()
    npc.region = RegionFactory()  # a region of another world

    assert "not in the archetype's world" in _errors(npc)["region"][0]


def test_npc_personality_override_must_name_an_archetype_trait():
    npc = NPCFactory()
    npc.personality_overrides = {"charisma": 0.5}

    assert "not a trait of this archetype" in _errors(npc)["personality_overrides"][0]


def test_npc_slug_must_be_lowercase():
    npc = NPCFactory.build(archetype=ArchetypeFactory(), slug="Count Valerian")
    npc.region = RegionFactory(world=npc.archetype.world)

    assert "slug" in _errors(npc)


def test_second_active_adapter_for_same_scope_and_task_is_rejected_by_clean():
    first = AdapterFactory(**ACTIVE_KWARGS)
    second = AdapterFactory.build(
        archetype=first.archetype, base_model=first.base_model, task=first.task, version=2, **ACTIVE_KWARGS
    )

    message = _errors(second)["status"][0]

    assert "already active" in message
    assert "at most one active adapter per scope and task" in message


def test_second_active_adapter_is_rejected_by_the_database_constraint():
    first = AdapterFactory(**ACTIVE_KWARGS)

    with pytest.raises(IntegrityError, match="adapter_one_active_per_scope_task"), transaction.atomic():
        AdapterFactory(
            archetype=first.archetype, base_model=first.base_model, task=first.task, **ACTIVE_KWARGS
        )


def test_active_adapters_for_different_tasks_coexist():
    first = AdapterFactory(**ACTIVE_KWARGS)

    AdapterFactory(
        archetype=first.archetype,
        base_model=first.base_model,
        task=AdapterTask.ACTION_POLICY,
        **ACTIVE_KWARGS,
    )

    assert Adapter.objects.filter(status=AdapterStatus.ACTIVE).count() == 2


def test_adapter_scope_must_match_its_target():
    adapter = AdapterFactory.build(
        scope=AdapterScope.NPC, archetype=ArchetypeFactory(), base_model=BaseModelFactory()
    )

    errors = _errors(adapter)

    assert errors["npc"] == ["Scope 'npc' needs its npc: pick one."]
    assert errors["archetype"] == ["Scope 'npc' uses only its npc: clear archetype."]


def test_adapter_scope_mismatch_is_rejected_by_the_database():
    with pytest.raises(IntegrityError, match="adapter_scope_target_matches"), transaction.atomic():
        AdapterFactory(scope=AdapterScope.SUBFACTION)


def test_adapter_rank_is_bounded():
    adapter = AdapterFactory.build(archetype=ArchetypeFactory(), base_model=BaseModelFactory(), rank=128)

    assert "rank" in _errors(adapter)


def test_active_adapter_needs_artifact_and_checksum():
    adapter = AdapterFactory.build(
        archetype=ArchetypeFactory(), base_model=BaseModelFactory(), status=AdapterStatus.ACTIVE
    )

    assert "sha256" in _errors(adapter)["artifact_path"][0]
