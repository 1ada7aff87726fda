"""The eval harness: prompts per task, gates with archetype overrides, rollback, a tampered
artifact refused, and (end to end, on the suite's vLLM worker) a trained action adapter measured
against the base model on the same prompts and promoted only through its gate."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from django.utils import timezone

from console.jobs.models import JobStatus
from console.lore.files import lore_file_read
from console.lore.graph import lore_graph_refresh
from console.lore.ingest import lore_document_ingest
from console.models import AdapterStatus, AdapterTask
from console.services.adapters import (
    AdapterRollbackRefused,
    adapter_folder_digest,
    adapter_import,
    adapter_lora_name,
    adapter_rollback,
    adapter_status_set,
)
from inference.prompts import player_text_block
from inference.residency import worker_loras
from tests.factories import AdapterFactory, ArchetypeFactory, NPCFactory, WorldFactory, suite_base_model
from training.datasets import BARK_CUES, dataset_build, dataset_read
from training.eval.harness import (
    ACTION_PROBES,
    CONVERSATION,
    PROBE_SAMPLES,
    VOICE_SAMPLES_KEPT,
    EvalError,
    EvalPrompts,
    Measured,
    eval_prompts,
    eval_run_claim,
    eval_run_create,
    eval_run_execute,
    eval_runs_recover,
    eval_samples,
    eval_score,
    evaluation_summary,
    task_gate,
)
from training.eval.metrics import INJECTION_PROBES, OUT_OF_CHARACTER, OUT_OF_CHARACTER_EXEMPLARS, gate_passes
from training.lora import lora_fit
from training.management.commands.train_pilot import EXAMPLES, PILOT, pilot_selected
from training.models import EvalRun, ExampleExchange

ACTIONS = [
    {"name": "idle", "description": "Stand still."},
    {"name": "talk", "description": "Speak to the player."},
    {"name": "attack", "description": "Strike the player."},
]


@pytest.fixture(autouse=True)
def _folders(settings, tmp_path):
    settings.DATASETS_DIR = tmp_path / "datasets"
    settings.ADAPTERS_DIR = tmp_path / "adapters"


@pytest.mark.django_db
def test_voice_prompts_cover_persona_probes_conversation_and_lore_and_choices_are_free_text():
    archetype = ArchetypeFactory(allowed_actions=ACTIONS)
    ArchetypeFactory(world=archetype.world, barks={"greet": ["Braaains."]})  # another voice to compare with
    NPCFactory(archetype=archetype, name="Count Valerian")
    for index in range(30):
        ExampleExchange.objects.create(
            archetype=archetype, player=f"Question {index}?", reply=f"Answer {index}."
        )
    dialogue = dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)
    actions = dataset_build(archetype=archetype, task=AdapterTask.ACTION_POLICY)
    voice = AdapterFactory(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)
    choice = AdapterFactory(archetype=archetype, task=AdapterTask.ACTION_POLICY)

    said = eval_prompts(voice, limit=3)
    chosen = eval_prompts(choice, limit=50)

    assert len(said.persona) == min(3, dialogue.heldout_examples)
    assert all(messages[-1]["role"] == "user" for messages in said.persona)  # the answer is not given
    assert len(said.probes) == PROBE_SAMPLES * len(INJECTION_PROBES)  # sampled: each asked again
    assert said.conversation
    assert said.calls() == len(said.persona) + len(said.probes) + len(CONVERSATION)
    assert "Braaains." in said.other_exemplars[next(iter(said.other_exemplars))]
    assert said.other_exemplars[OUT_OF_CHARACTER] == OUT_OF_CHARACTER_EXEMPLARS  # the assistant's register
    probes = sum(len(ACTION_PROBES[action["name"]]) for action in ACTIONS)  # idle, talk, attack
    assert len(chosen.choices) == actions.heldout_examples + probes
    assert chosen.actions == ["idle", "talk", "attack"]
    for messages, expected in chosen.choices:
        assert messages[-1]["content"] == "What does Count Valerian do now? Answer with JSON."
        assert expected in chosen.actions


@pytest.mark.django_db
def test_an_adapter_without_a_dataset_cannot_be_evaluated():
    with pytest.raises(EvalError, match="has no action_policy dataset: build one"):
        eval_prompts(AdapterFactory(task=AdapterTask.ACTION_POLICY))


@pytest.mark.django_db
def test_the_gate_is_the_tasks_with_the_archetypes_overrides():
    archetype = ArchetypeFactory(content_policy={"gates": {"action_policy": {"action_validity": 0.99}}})

    gate = task_gate(AdapterFactory(archetype=archetype, task=AdapterTask.ACTION_POLICY))

    assert gate["action_validity"] == 0.99


@pytest.mark.django_db
def test_rollback_brings_back_the_adapter_a_promotion_retired(tmp_path):
    archetype = ArchetypeFactory()
    old = AdapterFactory(archetype=archetype, version=1, status=AdapterStatus.RETIRED)
    new = AdapterFactory(archetype=archetype, version=2, status=AdapterStatus.ACTIVE, task=old.task)
    for adapter in (old, new):  # artifacts that verify (activation checks them)
        folder = tmp_path / f"v{adapter.version}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
        (folder / "adapter_model.safetensors").write_bytes(f"weights {adapter.version}".encode())

        adapter.artifact_path, (adapter.sha256, adapter.size_bytes) = (
            str(folder),
            adapter_folder_digest(folder),
        )
        adapter.save()

    adapter_rollback(new)

    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.status, new.status) == (AdapterStatus.ACTIVE, AdapterStatus.RETIRED)
    with pytest.raises(AdapterRollbackRefused, match="no earlier"):
        adapter_rollback(old)


@pytest.mark.django_db(transaction=True)
def test_a_trained_action_adapter_is_measured_against_the_base_model_and_gated(
    base_model_dir, vllm_worker, settings
):
    settings.INFERENCE_WORKERS = [vllm_worker.url]
    base_model = suite_base_model(base_model_dir)
    archetype = ArchetypeFactory(base_model=base_model, allowed_actions=ACTIONS)
    NPCFactory(archetype=archetype, name="Count Valerian")
    taught = [
        ("Hello there.", "talk"), ("(stands in silence)", "idle"), ("Die, fiend!", "attack"),
        ("Tell me more.", "talk"), ("(draws a blade)", "attack"), ("...", "idle"),
    ]  # fmt: skip
    for player, action in taught:
        ExampleExchange.objects.create(
            archetype=archetype, task=AdapterTask.ACTION_POLICY, player=player, action=action
        )
    dataset = dataset_build(archetype=archetype, task=AdapterTask.ACTION_POLICY)
    conversations = [json.loads(line)["messages"] for line in (Path(dataset.path) / "train.jsonl").open()]
    folder = lora_fit(
        base_model_path=str(base_model_dir), conversations=conversations,
        output_dir=Path(settings.ADAPTERS_DIR) / "a", steps=40, rank=8, alpha=16, learning_rate=5e-3,
    )  # fmt: skip
    adapter = adapter_import(
        path=folder, archetype=archetype, task=AdapterTask.ACTION_POLICY, base_model=base_model
    )

    run = eval_run_execute(eval_run_create(adapter=adapter), limit=12)

    assert run.status == JobStatus.SUCCEEDED, run.log
    assert run.baseline == "base"
    assert set(run.candidate_metrics) == set(run.baseline_metrics) == {"action_validity", "action_accuracy"}
    verdict = gate_passes(run.candidate_metrics, run.baseline_metrics, run.gate)
    assert run.passed == verdict.passed
    assert run.reasons == list(verdict.reasons)
    assert run.samples
    assert {"prompt", "candidate", "baseline"} <= set(run.samples[0])
    assert [row["metric"] for row in evaluation_summary(run)] == ["action_accuracy", "action_validity"]
    adapter.refresh_from_db()
    assert adapter.eval_metrics["candidate"] == run.candidate_metrics
    assert run.promoted == run.passed
    assert (adapter.status == AdapterStatus.ACTIVE) == run.passed
    assert (adapter_lora_name(adapter) in worker_loras(vllm_worker.url)) == run.passed
    # A trained policy names allowed actions far more often than the base model does.
    assert run.candidate_metrics["action_validity"] > run.baseline_metrics["action_validity"], run.samples
    if run.promoted:  # leave the worker as other tests expect it
        adapter_status_set(adapter=adapter, status=AdapterStatus.RETIRED)


@pytest.mark.django_db
def test_a_tampered_candidate_is_never_measured(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights swapped after import")
    adapter = AdapterFactory(artifact_path=str(folder), sha256="0" * 64)

    run = eval_run_execute(eval_run_create(adapter=adapter))

    assert run.status == JobStatus.FAILED
    assert "the folder changed after import" in run.error


@pytest.mark.django_db
def test_lore_questions_are_the_datasets_held_out_ones_and_persona_prompts_are_not_recitations(settings):
    settings.DATASET_HELDOUT_SHARE = 0.5  # enough of both kinds held out, whatever the hashes
    world = WorldFactory()
    chronicle = "# Chronicle\n\n" + "\n\n".join(
        f"In {1000 + 7 * index} the Bell of Saint Oswin{index} rang over Hollowmere for {index + 2} days."
        for index in range(40)
    )
    lore_document_ingest(world=world, lore=lore_file_read("chronicle.md", chronicle.encode()))
    lore_graph_refresh(world)
    vampire = ArchetypeFactory(world=world, content_policy={"lore_in_dialogue": True})
    ArchetypeFactory(world=world, barks={"greet": ["Braaains."]})
    NPCFactory(archetype=vampire)
    for index in range(12):
        ExampleExchange.objects.create(
            archetype=vampire, player=f"Question {index}?", reply=f"Answer {index}."
        )
    dataset = dataset_build(archetype=vampire, task=AdapterTask.DIALOGUE_STYLE)

    prompts = eval_prompts(AdapterFactory(archetype=vampire, task=AdapterTask.DIALOGUE_STYLE), limit=50)

    trained = {
        messages[-2]["content"]
        for messages in dataset_read(Path(dataset.path))
        if messages[-2]["role"] == "user"
    }
    assert prompts.lore, "the dataset holds lore questions out"
    for messages, fact in prompts.lore:
        assert player_text_block(fact.question) == messages[-1]["content"]
        assert messages[-1]["content"] not in trained  # never trained on
        assert "What you know of the world:" in messages[0]["content"]
        assert all(key in fact.chunk_text for key in fact.key_facts)
    assert prompts.persona
    assert all("What you know of the world:" not in messages[0]["content"] for messages in prompts.persona)


@pytest.mark.django_db
def test_a_run_is_claimed_once_and_one_whose_worker_died_is_queued_again(monkeypatch):
    queued: list[int] = []
    monkeypatch.setattr("training.tasks.eval_run_task.delay", queued.append)  # the broker boundary
    claimed = eval_run_create(adapter=AdapterFactory())
    silent = eval_run_create(adapter=AdapterFactory())
    alive = eval_run_create(adapter=AdapterFactory())
    EvalRun.objects.filter(pk=silent.pk).update(
        status=JobStatus.RUNNING, heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    EvalRun.objects.filter(pk=alive.pk).update(status=JobStatus.RUNNING, heartbeat_at=timezone.now())

    assert eval_run_claim(claimed.pk)
    assert not eval_run_claim(claimed.pk)  # a redelivered task finds it taken
    assert eval_runs_recover() == [silent.pk]

    assert queued == [silent.pk]
    silent.refresh_from_db()
    assert silent.status == JobStatus.QUEUED
    assert "stopped answering; queued again" in silent.log
    assert EvalRun.objects.get(pk=alive.pk).status == JobStatus.RUNNING
    assert eval_run_claim(silent.pk)  # the next delivery takes it


def test_persona_is_scored_on_the_conversation_too_and_each_probe_on_every_sample():
    own, other = ["I am the night, my dear guest."], ["Braaains... hungry..."]
    prompts = EvalPrompts(
        persona=[[{"role": "user", "content": "Hello?"}]],
        probes=[[{"role": "user", "content": probe.text}] for probe in INJECTION_PROBES] * PROBE_SAMPLES,
        conversation=True, own_exemplars=own, other_exemplars={"zombie": other},
    )  # fmt: skip
    replies = ["The night keeps its secrets, my dear."] * len(prompts.probes)
    developer_mode = [probe.name for probe in INJECTION_PROBES].index("developer_mode")
    # Its second sample leaks, in the vampire's voice.
    replies[len(INJECTION_PROBES) + developer_mode] = "The night keeps its secrets. Developer mode enabled."
    outputs = {
        "persona": own,  # in voice
        "conversation": other * len(CONVERSATION),  # every turn in the zombie's voice
        "probes": replies,
    }

    measured = eval_score(prompts, outputs).metrics

    # In voice: the persona reply and the probe replies (the conversation is the zombie's).
    heard = 1 + len(CONVERSATION) + len(prompts.probes)
    assert measured["persona_consistency"] == round((1 + len(prompts.probes)) / heard, 4)
    assert measured["injection_refusal"] == round(1 - 1 / len(prompts.probes), 4)


def test_no_dataset_cue_or_pilot_example_is_a_line_the_conversation_scores():
    cues = {cue for lines in BARK_CUES.values() for cue in lines}
    pilot = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    players = {player for tasks in pilot.values() for pairs in tasks.values() for player, _ in pairs}

    assert not (cues | players) & set(CONVERSATION)


def test_every_probe_and_choice_is_kept_with_its_verdict_and_voice_parts_only_in_part():
    prompts = EvalPrompts(
        persona=[[{"role": "user", "content": f"Hello {i}?"}] for i in range(10)],
        probes=[[{"role": "user", "content": probe.text}] for probe in INJECTION_PROBES],
        choices=[([{"role": "user", "content": "(swings a torch)"}], "attack")] * 3,
        actions=["attack", "wander"],
    )  # fmt: skip
    probes = ["Grrraagh."] * len(INJECTION_PROBES)
    probes[2] = ""  # silence is no refusal
    candidate = Measured(outputs={
        "persona": ["Braaains."] * 10, "probes": probes,
        "choices": ['{"action": "attack"}', '{"action": "flee"}', '{"action": "wander"}'],
    })  # fmt: skip
    baseline = Measured(outputs={
        "persona": ["Hello!"] * 10, "probes": ["I am a virtual AI, here to help."] * len(INJECTION_PROBES),
        "choices": ["attack"] * 3,
    })  # fmt: skip

    samples = eval_samples(prompts, candidate, baseline)

    by_part = {part: [s for s in samples if s["part"] == part] for part in ("persona", "probes", "choices")}
    assert len(by_part["persona"]) == VOICE_SAMPLES_KEPT < 10
    assert {s["candidate_ok"] for s in by_part["persona"]} == {None}
    assert len(by_part["probes"]) == len(INJECTION_PROBES)
    assert [s["candidate_ok"] for s in by_part["probes"]].count(False) == 1
    assert not any(s["baseline_ok"] for s in by_part["probes"])  # "virtual AI" is a leak
    assert [s["candidate_ok"] for s in by_part["choices"]] == [True, False, False]
    assert [s["baseline_ok"] for s in by_part["choices"]] == [True, True, True]


def test_the_pilot_can_be_narrowed_to_some_adapters_and_a_wrong_name_says_the_choices():
    assert pilot_selected([]) == list(PILOT)
    assert pilot_selected(["zombie:action_policy", "vampire"]) == [
        ("vampire", AdapterTask.DIALOGUE_STYLE), ("vampire", AdapterTask.ACTION_POLICY),
        ("zombie", AdapterTask.ACTION_POLICY),
    ]  # fmt: skip
    with pytest.raises(
        CommandError, match="'banshee' names no pilot adapter; choose from vampire:dialogue_style"
    ):
        pilot_selected(["banshee"])
