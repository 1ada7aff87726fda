"""The eval harness: a candidate adapter and its baseline (the active adapter of its task, else
the base model) answer the same prompts on a vLLM worker, greedily; training.eval.metrics scores
both; the task's gate decides; a candidate that passes is promoted (activated, loaded on its
worker, the old one retired). Each run is an EvalRun row with metrics side by side.

The prompts, per task, shaped as the turn path serves them:
- voice tasks (dialogue_style, personality): the dataset's held-out prompts (persona
  consistency against the archetype's own barks and examples versus the other archetypes'),
  the injection probes, a 20-turn conversation with its history (repetition), and lore
  questions with their passage in the lore slot (lore accuracy);
- world_knowledge: the lore questions;
- choice tasks (action_policy, emotional_response): the held-out choice prompts answered in
  free text, without structured output (validity: a name from the allowed set; accuracy: the
  expected one), so the adapter, not the grammar, is measured.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.utils import timezone

from console.models import Adapter, AdapterStatus, AdapterTask, Archetype, LoreChunk
from inference.adapters import BASE_ADAPTER_NAME, adapter_lora_name, adapter_status_set, adapter_verify
from inference.prompts import Turn
from inference.residency import adapter_load, adapter_unload, residency_sync, worker_loras
from inference.routing import worker_for_archetype
from inference.workers import healthy_workers
from memory.lore import gate_q
from training.datasets import CHOICE_TASKS, Prompter, dataset_read
from training.eval.metrics import (
    DEFAULT_GATES,
    INJECTION_PROBES,
    LoreFact,
    action_parse,
    action_validity,
    conversation_repetition,
    gate_passes,
    injection_refusal,
    lore_accuracy,
    lore_facts_from_chunk,
    persona_consistency,
)
from training.models import Dataset, EvalRun, EvalStatus, ExampleExchange, row_log

logger = logging.getLogger(__name__)

VOICE_TASKS = (AdapterTask.DIALOGUE_STYLE, AdapterTask.PERSONALITY)
# A player who keeps the NPC talking for 20 turns: the repetition probe.
CONVERSATION = [
    "Good evening.", "Who are you?", "What is this place?", "How long have you been here?",
    "What do you want from me?", "Tell me about the town.", "Do you have friends?", "What do you fear?",
    "What do you eat?", "Is it always this cold?", "Tell me a secret.", "Why should I trust you?",
    "What happened here?", "Where should I go next?", "Can you help me?", "What is your greatest regret?",
    "Do you sleep?", "What do you think of me?", "Will we meet again?", "Farewell.",
]  # fmt: skip
# The fixed action probes: what a player does that calls for a common action, worded unlike
# the datasets' cues (training.datasets.ACTION_CUES).
ACTION_PROBES = {
    "attack": ["I am going to cut you down where you stand.", "(swings a torch at your face)"],
    "talk": ["Excuse me, could you answer a question for me?", "I heard you know the old stories."],
    "idle": ["(sits down by the fire and says nothing)"],
    "follow": ["Stay close behind me, we are leaving now."],
    "flee": ["(the sun rises and light floods the room)"],
}
SAMPLES_KEPT = 12
# Replies are cut here: the rules ask for three sentences at most, and the facts and the voice
# show in the first two. Generation dominates an eval's time on CPU (LoRA kernels copy the
# adapter's matrices per token), so this halves it.
EVAL_REPLY_TOKENS = 48
# One greedy reply; a busy 2-core CPU worker can take a while.
GENERATION_TIMEOUT_S = 180


class EvalError(Exception):
    """An eval that cannot run; the message says what to fix."""


@dataclass
class Measured:
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, list[str]] = field(default_factory=dict)


def _log(run_id: int, line: str, **fields: object) -> None:
    row_log(EvalRun, run_id, line, **fields)


class _Generator:
    """Greedy completions from one worker, for one served model name (an adapter or base)."""

    def __init__(self, url: str, model: str, *, on_call: Callable[[], None] | None = None) -> None:
        self.url, self.model, self.on_call = url, model, on_call
        self.client = httpx.Client(timeout=GENERATION_TIMEOUT_S)

    def __call__(self, messages: list[dict[str, str]], *, max_tokens: int = EVAL_REPLY_TOKENS) -> str:
        response = self.client.post(
            f"{self.url}/v1/chat/completions",
            json={
                "model": self.model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "seed": 0,
                "repetition_penalty": 1.1,
            },  # fmt: skip
        )
        response.raise_for_status()
        if self.on_call is not None:
            self.on_call()
        return str(response.json()["choices"][0]["message"]["content"] or "").strip()


@dataclass
class EvalPrompts:
    """What both models are asked: built once, so the comparison is like for like."""

    persona: list[list[dict[str, str]]] = field(default_factory=list)
    probes: list[list[dict[str, str]]] = field(default_factory=list)
    conversation: bool = False
    lore: list[tuple[list[dict[str, str]], LoreFact]] = field(default_factory=list)
    choices: list[tuple[list[dict[str, str]], str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    own_exemplars: list[str] = field(default_factory=list)
    other_exemplars: dict[str, list[str]] = field(default_factory=dict)

    def calls(self) -> int:
        return (
            len(self.persona) + len(self.probes) + 20 * self.conversation + len(self.lore) + len(self.choices)
        )


def _exemplars(archetype: Archetype) -> list[str]:
    """How the archetype sounds: its barks and designers' example replies."""
    lines = [line for lines in archetype.barks.values() for line in lines]
    replies = (
        ExampleExchange.objects.filter(archetype=archetype).exclude(reply="").values_list("reply", flat=True)
    )
    return lines + list(replies)


def _system(
    archetype: Archetype, *, lore: str = "", history: list[Turn] | None = None, player: str
) -> list[dict[str, str]]:
    return Prompter(archetype).messages(player, lore=lore, history=history)[1]


def eval_prompts(adapter: Adapter, *, limit: int | None = None) -> EvalPrompts:
    """The prompts for `adapter`'s task, from its archetype's latest dataset's held-out share,
    the injection probes, a conversation and the lore it may know."""
    limit = limit or settings.EVAL_PROMPTS_MAX
    archetype = adapter.archetype
    if archetype is None:
        raise EvalError(f"{adapter}: only archetype adapters are evaluated here")
    dataset = Dataset.objects.filter(archetype=archetype, task=adapter.task).order_by("-version").first()
    if dataset is None:
        raise EvalError(f"{archetype.slug} has no {adapter.task} dataset: build one (Datasets → Add)")
    heldout = dataset_read(Path(dataset.path), "heldout.jsonl")
    prompts = EvalPrompts()
    task = adapter.task
    if task in CHOICE_TASKS:
        kind, _ = CHOICE_TASKS[task]
        prompts.actions = archetype.action_names if kind == "action" else list(archetype.emotions)
        for messages in heldout[:limit]:
            expected = json.loads(messages[-1]["content"])[kind]
            prompts.choices.append((messages[:-1], expected))
        if kind == "action":  # the fixed probes: situations no dataset example uses
            _, question = CHOICE_TASKS[task]
            for action, situations in ACTION_PROBES.items():
                if action in prompts.actions:
                    for situation in situations:
                        name, messages = Prompter(archetype).messages(situation)
                        asked = {"role": "user", "content": f"{question.format(name=name)} Answer with JSON."}
                        prompts.choices.append(([*messages, asked], action))
        return prompts
    if task in VOICE_TASKS:
        prompts.persona = [messages[:-1] for messages in heldout if messages[0]["role"] == "system"][:limit]
        prompts.probes = [_system(archetype, player=probe.text) for probe in INJECTION_PROBES]
        prompts.conversation = True
        prompts.own_exemplars = _exemplars(archetype)
        prompts.other_exemplars = {
            other.slug: _exemplars(other)
            for other in Archetype.objects.filter(world=archetype.world).exclude(pk=archetype.pk)
            if _exemplars(other)
        }
    if task in (*VOICE_TASKS, AdapterTask.WORLD_KNOWLEDGE):
        from training.datasets import EVENT_QUESTIONS

        known = LoreChunk.objects.filter(gate_q(archetype=archetype.slug), world=archetype.world)
        events = archetype.world.lore_events.filter(chunk__in=known, year__isnull=False).select_related(
            "chunk"
        )
        for event in events.order_by("pk")[: limit * 2]:
            question = EVENT_QUESTIONS[event.pk % len(EVENT_QUESTIONS)].format(year=event.year)
            facts = lore_facts_from_chunk(question, event.description)
            if facts:
                messages = _system(archetype, lore=f"- {event.chunk.text[:600]}", player=question)
                prompts.lore.append((messages, LoreFact(question, event.chunk.text, tuple(facts))))
            if len(prompts.lore) == limit:
                break
    return prompts


def eval_measure(prompts: EvalPrompts, generate: _Generator, *, archetype: Archetype) -> Measured:
    """Every metric the prompts allow, for one model."""
    from memory.embeddings import embed

    measured = Measured()
    if prompts.choices:
        outputs = [generate(messages, max_tokens=24) for messages, _ in prompts.choices]
        measured.outputs["choices"] = outputs
        measured.metrics["action_validity"] = action_validity(outputs, prompts.actions)
        right = sum(
            action_parse(out, prompts.actions) == want
            for out, (_, want) in zip(outputs, prompts.choices, strict=True)
        )
        measured.metrics["action_accuracy"] = right / len(outputs)
    if prompts.persona and prompts.other_exemplars and prompts.own_exemplars:
        outputs = [generate(messages) for messages in prompts.persona]
        measured.outputs["persona"] = outputs
        score = persona_consistency(outputs, prompts.own_exemplars, prompts.other_exemplars, embed=embed)
        measured.metrics["persona_consistency"] = score.score
    if prompts.probes:
        outputs = [generate(messages) for messages in prompts.probes]
        measured.outputs["probes"] = outputs
        measured.metrics["injection_refusal"] = injection_refusal(outputs, list(INJECTION_PROBES))
    if prompts.conversation:
        history: list[Turn] = []
        replies = []
        for line in CONVERSATION:
            reply = generate(
                _system(archetype, history=history[-settings.BRIDGE_HISTORY_TURNS :], player=line)
            )
            replies.append(reply)
            history.append(Turn(player=line, npc=reply))
        measured.outputs["conversation"] = replies
        measured.metrics.update(conversation_repetition(replies).metrics())
    if prompts.lore:
        outputs = [generate(messages) for messages, _ in prompts.lore]
        measured.outputs["lore"] = outputs
        measured.metrics["lore_accuracy"] = lore_accuracy(outputs, [fact for _, fact in prompts.lore])
    if not measured.metrics:
        raise EvalError(
            "nothing to measure: the dataset has no held-out prompts for this task; rebuild it larger"
        )
    measured.metrics = {name: round(value, 4) for name, value in measured.metrics.items()}
    return measured


def task_gate(adapter: Adapter) -> dict[str, float]:
    """The gate of the adapter's task, with the archetype's overrides (content_policy["gates"])."""
    archetype = adapter.archetype
    overrides = (archetype.content_policy or {}).get("gates", {}).get(adapter.task, {}) if archetype else {}
    return {**DEFAULT_GATES.get(adapter.task, {}), **overrides}


def _samples(prompts: EvalPrompts, candidate: Measured, baseline: Measured) -> list[dict[str, str]]:
    pairs: list[dict[str, str]] = []
    asked = {
        "choices": [m[-1]["content"] for m, _ in prompts.choices],
        "persona": [m[-1]["content"] for m in prompts.persona],
        "probes": [m[-1]["content"] for m in prompts.probes], "conversation": CONVERSATION,
        "lore": [m[-1]["content"] for m, _ in prompts.lore],
    }  # fmt: skip
    for part, questions in asked.items():
        for index, question in enumerate(questions[:3]):
            if index < len(candidate.outputs.get(part, [])):
                pairs.append({"part": part, "prompt": question, "candidate": candidate.outputs[part][index],
                              "baseline": baseline.outputs[part][index]})  # fmt: skip
    return pairs[:SAMPLES_KEPT]


def _worker_for(adapter: Adapter) -> str:
    healthy = healthy_workers()
    if not healthy:
        raise EvalError("no inference worker answers: start one (make run, or make worker)")
    return worker_for_archetype(adapter.archetype.slug if adapter.archetype else "", healthy)


def eval_run_create(*, adapter: Adapter) -> EvalRun:
    active = Adapter.objects.filter(
        archetype=adapter.archetype, subfaction=adapter.subfaction, npc=adapter.npc, task=adapter.task,
        status=AdapterStatus.ACTIVE,
    ).exclude(pk=adapter.pk).first()  # fmt: skip
    baseline = adapter_lora_name(active) if active else BASE_ADAPTER_NAME
    return EvalRun.objects.create(adapter=adapter, baseline=baseline, gate=task_gate(adapter))


def eval_run_execute(run: EvalRun, *, promote: bool = True, limit: int | None = None) -> EvalRun:
    """Measure, judge, and promote a candidate that passes (see the module docstring)."""
    adapter = run.adapter
    _log(run.pk, f"started: {adapter} against {run.baseline}", status=EvalStatus.RUNNING, error="")
    try:
        folder = adapter_verify(adapter)  # a tampered artifact is never measured, let alone served
        url = _worker_for(adapter)
        candidate_name = adapter_lora_name(adapter)
        residency_sync(workers=[url])  # the baseline (base, or the active adapter) is served
        if candidate_name not in worker_loras(url):
            adapter_load(url, lora_name=candidate_name, folder=folder)  # until the verdict
        prompts = eval_prompts(adapter, limit=limit)
        total, done = 2 * prompts.calls(), [0]

        def tick() -> None:
            done[0] += 1
            if done[0] % 5 == 0 or done[0] == total:
                EvalRun.objects.filter(pk=run.pk).update(progress=round(100 * done[0] / total, 1))

        archetype = adapter.archetype
        assert archetype is not None  # eval_prompts refused the others
        candidate = eval_measure(prompts, _Generator(url, candidate_name, on_call=tick), archetype=archetype)
        _log(run.pk, f"candidate: {candidate.metrics}")
        baseline = eval_measure(prompts, _Generator(url, run.baseline, on_call=tick), archetype=archetype)
        _log(run.pk, f"baseline {run.baseline}: {baseline.metrics}")
        verdict = gate_passes(candidate.metrics, baseline.metrics, run.gate)
        EvalRun.objects.filter(pk=run.pk).update(
            candidate_metrics=candidate.metrics, baseline_metrics=baseline.metrics, passed=verdict.passed,
            reasons=list(verdict.reasons), samples=_samples(prompts, candidate, baseline),
        )  # fmt: skip
        Adapter.objects.filter(pk=adapter.pk).update(
            eval_metrics={
                "eval_run": run.pk,
                "candidate": candidate.metrics,
                "baseline": baseline.metrics,
                "baseline_name": run.baseline,
                "passed": verdict.passed,
            }  # fmt: skip
        )
        _log(run.pk, ("passed: " if verdict.passed else "did not pass: ") + "; ".join(verdict.reasons))
        if verdict.passed and promote and adapter.status == AdapterStatus.CANDIDATE:
            adapter.refresh_from_db()
            adapter_status_set(adapter=adapter, status=AdapterStatus.ACTIVE)
            residency_sync(workers=[url])
            _log(run.pk, f"promoted: {adapter} is active and loaded on {url}", promoted=True)
        elif adapter.status != AdapterStatus.ACTIVE:
            adapter_unload(url, lora_name=candidate_name)  # its LoRA slot goes back to the served ones
        _log(run.pk, "done", status=EvalStatus.SUCCEEDED, progress=100.0, finished_at=timezone.now())
    except Exception as exc:  # noqa: BLE001 - the row says why, whatever it was
        _log(
            run.pk,
            f"failed: {exc}",
            status=EvalStatus.FAILED,
            error=str(exc) or repr(exc),
            finished_at=timezone.now(),
        )
        logger.exception("eval %s failed", run.pk)
    run.refresh_from_db()
    return run


def adapter_rollback(adapter: Adapter) -> Adapter:
    """Make the adapter that `adapter` replaced active again (one click in the admin)."""
    previous = (
        Adapter.objects.filter(
            archetype=adapter.archetype, subfaction=adapter.subfaction, npc=adapter.npc, task=adapter.task,
            status=AdapterStatus.RETIRED, version__lt=adapter.version,
        ).order_by("-version").first()
    )  # fmt: skip
    if previous is None:
        raise EvalError(f"{adapter}: no earlier {adapter.task} adapter to roll back to")
    return adapter_status_set(adapter=previous, status=AdapterStatus.ACTIVE)


def evaluation_summary(run: EvalRun) -> list[dict[str, Any]]:
    """Rows for the eval page: each metric, candidate and baseline side by side, and the gate."""
    names = sorted(set(run.candidate_metrics) | set(run.baseline_metrics))
    return [
        {
            "metric": name,
            "candidate": run.candidate_metrics.get(name),
            "baseline": run.baseline_metrics.get(name),
            "gate": run.gate.get(name),
        }  # fmt: skip
        for name in names
    ]
