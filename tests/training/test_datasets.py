"""Datasets: curated from barks, actions, designers' exchanges, approved turns and gated lore,
shaped as the turn path serves them, split without leaks, and refused once tampered with."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
from django.utils import timezone

from console.lore.files import lore_file_read
from console.lore.graph import lore_graph_refresh
from console.lore.ingest import lore_document_ingest
from console.models import AdapterTask
from inference.prompts import player_text_block
from memory.models import MemoryEvent, MemoryEventKind
from tests.factories import ArchetypeFactory, NPCFactory, WorldFactory
from training.datasets import (
    ACTION_EXAMPLES_MIN,
    HISTORY_MAX,
    DatasetError,
    dataset_build,
    dataset_examples,
    dataset_read,
    dataset_verify,
)
from training.models import ExampleExchange, TranscriptApproval
from training.transcripts import transcripts_approve

pytestmark = pytest.mark.django_db

OPEN_LORE = b"""# The Town

The Weeping Well in the Market Square of Hollowmere has never run dry since it was dug in 1012.
"""
SEALED_LORE = b"""---
archetypes: [vampire]
---
# Sealed

Lady Seraphine Valerian was born in 1049 and made the Count in 1089.
"""

# Lore in a dialogue dataset, which a designer chooses (the default keeps it for world_knowledge):
# these tests build dialogue datasets from the world's lore and the factory's few barks.
LORE_MIXED = {"lore_in_dialogue": True}


@pytest.fixture(autouse=True)
def _datasets_dir(settings, tmp_path):
    settings.DATASETS_DIR = tmp_path / "datasets"


@pytest.fixture
def world():
    world = WorldFactory()
    for name, data in (("town.md", OPEN_LORE), ("sealed.md", SEALED_LORE)):
        lore_document_ingest(world=world, lore=lore_file_read(name, data))
    lore_graph_refresh(world)
    return world


def _turn_event(npc_slug: str, player: str, npc: str, action: str = "talk") -> MemoryEvent:
    return MemoryEvent.objects.create(
        event_id=uuid.uuid4(), kind=MemoryEventKind.TURN, npc_slug=npc_slug, player_id="p1",
        occurred_at=timezone.now(),
        payload={"player": player, "npc": npc, "emotion": "amused", "action": action},
    )  # fmt: skip


def test_a_dialogue_dataset_takes_every_source_shaped_as_served(world):
    # Lore in the voice's dataset is a designer's choice (by default, world_knowledge's only).
    vampire = ArchetypeFactory(world=world, slug="vampire", content_policy=LORE_MIXED)
    npc = NPCFactory(archetype=vampire, name="Count Valerian")
    ExampleExchange.objects.create(
        archetype=vampire, player="Who are you?", reply="I am the night, my dear guest."
    )
    good = _turn_event(npc.slug, "Good evening, Count.", "Good evening, little candle.")
    other_kind = MemoryEvent.objects.create(
        event_id=uuid.uuid4(), kind=MemoryEventKind.FACT, npc_slug=npc.slug, player_id="p1",
        occurred_at=timezone.now(), payload={"text": "a fact"},
    )  # fmt: skip

    assert transcripts_approve(events=[good, other_kind]) == 1
    assert transcripts_approve(events=[good]) == 0  # approving twice changes nothing
    dataset = dataset_build(archetype=vampire, task=AdapterTask.DIALOGUE_STYLE)

    folder = dataset_verify(dataset)
    rows = [json.loads(line) for name in ("train.jsonl", "heldout.jsonl") for line in (folder / name).open()]
    sources = {row["source"].split(":")[0] for row in rows}
    assert sources == {"exchange", "transcript", "bark", "lore"}
    assert dataset.manifest["provenance"]["transcript"] == 1
    assert dataset.train_examples + dataset.heldout_examples == len(rows)
    assert dataset.train_examples > dataset.heldout_examples > 0
    exchange = next(row for row in rows if row["source"].startswith("exchange"))
    system, user, assistant = exchange["messages"]
    assert system["role"] == "system"
    assert "Your name is Count Valerian." in system["content"]
    assert user["content"] == player_text_block("Who are you?")  # as the turn path sends it
    assert assistant == {"role": "assistant", "content": "I am the night, my dear guest."}
    lore = [row for row in rows if row["source"].startswith("lore")]
    assert any("1049" in row["messages"][-1]["content"] for row in lore)
    assert all("What you know of the world:" in row["messages"][0]["content"] for row in lore)


def test_gated_lore_stays_out_of_other_archetypes_datasets(world):
    zombie = ArchetypeFactory(world=world, slug="zombie", content_policy=LORE_MIXED)

    dataset = dataset_build(archetype=zombie, task=AdapterTask.DIALOGUE_STYLE)

    text = "".join(path.read_text() for path in Path(dataset.path).glob("*.jsonl"))
    assert "Weeping Well" in text
    assert "Seraphine" not in text


def test_lore_trains_the_world_knowledge_adapter_not_the_voice_unless_a_designer_mixes_it_in(world):
    plain = ArchetypeFactory(world=world, slug="vampire")
    mixed = ArchetypeFactory(world=world, slug="lich", content_policy=LORE_MIXED)
    NPCFactory(archetype=plain)
    NPCFactory(archetype=mixed)

    def sources(archetype, task):
        return {example.source.split(":")[0] for example in dataset_examples(archetype=archetype, task=task)}

    assert "lore" not in sources(plain, AdapterTask.DIALOGUE_STYLE)
    assert "lore" in sources(plain, AdapterTask.WORLD_KNOWLEDGE)
    assert "lore" in sources(mixed, AdapterTask.DIALOGUE_STYLE)


def test_an_action_dataset_answers_the_turns_choice_question_with_allowed_actions(world):
    vampire = ArchetypeFactory(world=world, slug="vampire")
    npc = NPCFactory(archetype=vampire, name="Count Valerian")
    ExampleExchange.objects.create(
        archetype=vampire,
        task=AdapterTask.ACTION_POLICY,
        player="(kneels and bares the neck)",
        action="bare_fangs",
    )
    ExampleExchange.objects.create(
        archetype=vampire,
        task=AdapterTask.ACTION_POLICY,
        player="Dance!",
        action="dance",  # not allowed
    )
    transcripts_approve(events=[_turn_event(npc.slug, "Hello.", "Good evening.", action="talk")])

    dataset = dataset_build(archetype=vampire, task=AdapterTask.ACTION_POLICY)

    rows = dataset_read(Path(dataset.path)) + dataset_read(Path(dataset.path), "heldout.jsonl")
    answers = [json.loads(messages[-1]["content"]) for messages in rows]
    assert {answer["action"] for answer in answers} == {"idle", "talk", "bare_fangs"}
    assert all(
        messages[-2]["content"] == "What does Count Valerian do now? Answer with JSON." for messages in rows
    )
    # idle's 3 cues and bare_fangs' exchange and description are repeated up to 4 examples each.
    assert dataset.manifest["provenance"] == {"action": 9, "exchange": 2, "transcript": 1}


def test_a_tampered_dataset_is_refused_and_says_to_rebuild(world):
    dataset = dataset_build(
        archetype=ArchetypeFactory(world=world, content_policy=LORE_MIXED), task=AdapterTask.DIALOGUE_STYLE
    )
    train = Path(dataset.path) / "train.jsonl"
    dataset_verify(dataset)

    train.write_text(train.read_text() + '{"messages": [], "source": "smuggled"}\n')

    with pytest.raises(DatasetError, match="train.jsonl does not match its manifest.*rebuild the dataset"):
        dataset_verify(dataset)
    manifest = Path(dataset.path) / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"train": ', '"train": 1'))
    with pytest.raises(DatasetError, match="manifest.json changed"):
        dataset_verify(dataset)


def test_too_few_examples_is_a_clear_error_and_leaves_nothing_behind(settings):
    bare = ArchetypeFactory(barks={}, lexicon=[])

    with pytest.raises(DatasetError, match="only 0 examples.*add example exchanges"):
        dataset_build(archetype=bare, task=AdapterTask.DIALOGUE_STYLE)
    assert not any(Path(settings.DATASETS_DIR).glob("**/*.jsonl"))


def test_versions_count_up_and_each_keeps_its_own_files(world):
    archetype = ArchetypeFactory(world=world, content_policy=LORE_MIXED)

    first = dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)
    ExampleExchange.objects.create(
        archetype=archetype, player="Speak.", reply="Nightfall comes, my dear guest."
    )
    second = dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)

    assert (first.version, second.version) == (1, 2)
    assert first.path != second.path
    dataset_verify(first)
    assert (
        second.train_examples + second.heldout_examples == first.train_examples + first.heldout_examples + 1
    )


def test_approvals_only_count_turns_of_known_npcs():
    archetype = ArchetypeFactory()
    npc = NPCFactory(archetype=archetype)
    gone = _turn_event("an-npc-long-deleted", "Hi.", "Hello.")

    assert transcripts_approve(events=[_turn_event(npc.slug, "Hi.", "Hello."), gone]) == 1
    assert TranscriptApproval.objects.get().archetype == archetype


def test_every_other_voice_example_answers_with_earlier_exchanges_in_its_history(world):
    vampire = ArchetypeFactory(world=world, slug="vampire")
    NPCFactory(archetype=vampire)
    replies = {f"Question {index}?": f"Answer number {index}, my dear." for index in range(10)}
    for player, reply in replies.items():
        ExampleExchange.objects.create(archetype=vampire, player=player, reply=reply)

    dataset = dataset_build(archetype=vampire, task=AdapterTask.DIALOGUE_STYLE)

    rows = [
        json.loads(line)
        for name in ("train.jsonl", "heldout.jsonl")
        for line in (Path(dataset.path) / name).open()
    ]
    voice = [row["messages"] for row in rows if row["source"].startswith(("exchange", "bark"))]
    with_history = [messages for messages in voice if len(messages) > 3]
    assert len(voice) // 2 - 1 <= len(with_history) <= len(voice) // 2 + 1
    for messages in with_history:
        earlier = [m["content"] for m in messages[1:-2] if m["role"] == "assistant"]
        assert 1 <= len(earlier) <= HISTORY_MAX
        assert messages[-1]["content"] not in earlier  # never its own answer to copy
        assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * len(earlier) + ["user"]


def test_every_allowed_action_is_taught_at_least_a_few_times(world):
    vampire = ArchetypeFactory(world=world, slug="vampire")
    NPCFactory(archetype=vampire)
    ExampleExchange.objects.create(
        archetype=vampire, task=AdapterTask.ACTION_POLICY, player="(kneels)", action="bare_fangs"
    )

    dataset = dataset_build(archetype=vampire, task=AdapterTask.ACTION_POLICY)

    rows = dataset_read(Path(dataset.path)) + dataset_read(Path(dataset.path), "heldout.jsonl")
    taught = Counter(json.loads(messages[-1]["content"])["action"] for messages in rows)
    assert set(taught) == set(vampire.action_names)
    assert min(taught.values()) >= ACTION_EXAMPLES_MIN
