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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.db.models.functions import Coalesce
from django.utils import timezone

from console.jobs.models import JOB_UNDER_WAY, JobStatus
from console.jobs.services import job_claim, job_enqueue, job_log, job_run
from console.lore.embeddings import embed
from console.models import Adapter, AdapterStatus, AdapterTask, Archetype
from console.services.adapters import BASE_MODEL_NAME, adapter_lora_name, adapter_status_set, adapter_verify
from inference.prompts import Turn
from inference.residency import adapter_load, adapter_unload, residency_sync, worker_loras
from inference.routing import worker_for_archetype
from inference.sampling import tier_sampling
from inference.workers import sampling_seed_supported, worker_headers, workers_probe_now
from training.datasets import CHOICE_TASKS, Prompter, dataset_examples_read, dataset_read
from training.eval.metrics import (
    DEFAULT_GATES,
    INJECTION_PROBES,
    OUT_OF_CHARACTER,
    OUT_OF_CHARACTER_EXEMPLARS,
    InjectionProbe,
    LoreFact,
    action_parse,
    action_validity,
    conversation_repetition,
    gate_passes,
    injection_refusal,
    injection_refused,
    lore_accuracy,
    lore_answer_correct,
    lore_facts_from_chunk,
    persona_consistency,
)
from training.models import Dataset, EvalRun, ExampleExchange

logger = logging.getLogger(__name__)
# The task that runs it, sent by name (console.jobs.services.job_enqueue).
EVAL_RUN_TASK = "training.tasks.eval_run_task"

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
# Replies of the voice parts (persona, conversation) kept on the eval page, per part.
VOICE_SAMPLES_KEPT = 4
# Each injection probe is asked this many times: voice is sampled, and one reply per probe left
# a pilot's refusal share moving by 0.25 between two runs of the same adapter.
PROBE_SAMPLES = 2
# Replies are cut here: the rules ask for three sentences at most, and the facts and the voice
# show in the first two. Generation dominates an eval's time on CPU (LoRA kernels copy the
# adapter's matrices per token), so this halves it.
EVAL_REPLY_TOKENS = 48
# A choice is a short JSON object.
CHOICE_REPLY_TOKENS = 24
# Requests in flight per model: enough for vLLM to batch a part's prompts together.
GENERATION_CONCURRENCY = 8
PROGRESS_EVERY_S = 2.0
# A running eval silent for this long lost its worker (training.eval.harness.eval_runs_recover).
EVAL_STALE_AFTER = timedelta(minutes=2)
# One reply. Generous: an eval's requests queue behind each other (and behind other evals') on
# a 2-core CPU worker, where prefill runs at a few hundred tokens a second; four pilot evals at
# once left requests waiting over 3 minutes. A dead worker fails the request at once anyway.
GENERATION_TIMEOUT_S = 600
# The conversation's turns go before the eval's other requests at the worker: they are its
# critical path (each waits on the one before), the rest fill the engine around them.
CONVERSATION_PRIORITY_BOOST = 1


class EvalError(Exception):
    """An eval that cannot run; the message says what to fix."""


@dataclass
class Measured:
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, list[str]] = field(default_factory=dict)


def _log(run_id: int, line: str, **fields: object) -> None:
    job_log(EvalRun, run_id, line, **fields)


class _Generator:
    """Greedy completions from one worker, for one served model name (an adapter or base)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        on_call: Callable[[], None] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.url, self.model, self.on_call = url, model, on_call
        # time.monotonic() past which no request is made: the training worker's solo pool
        # enforces no Celery time limit, so the eval bounds itself (EVAL_TIME_LIMIT_S).
        self.deadline = deadline
        self.client = httpx.Client(timeout=GENERATION_TIMEOUT_S, headers=worker_headers())

    def __call__(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = EVAL_REPLY_TOKENS,
        seed: int | None = None,
        boost: int = 0,
    ) -> str:
        """Greedy, or (with a seed) sampled as a Gold turn is served: reproducibly where the
        engine takes a per-request seed, unseeded on a CPU worker (where a seed kills it)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise EvalError(
                f"stopped: the eval took longer than EVAL_TIME_LIMIT_S ({settings.EVAL_TIME_LIMIT_S} s); "
                "evaluate again when the worker is less busy, or raise the limit"
            )
        # Imported here: inference.engine loads the OpenAI client (0.6 s), and the admin imports
        # this module at every process start (a chaos test's archiver started too late).
        from inference.engine import BACKGROUND_PRIORITY

        sampling = tier_sampling("gold")
        if seed is not None and not sampling_seed_supported():
            seed_sent, sampled = None, True
        else:
            seed_sent, sampled = seed, seed is not None
        response = self.client.post(
            f"{self.url}/v1/chat/completions",
            json={
                "model": self.model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": sampling.temperature if sampled else 0.0,
                "top_p": sampling.top_p if sampled else 1.0,
                "seed": seed_sent,
                "repetition_penalty": sampling.repetition_penalty,
                # After every player's turn on a shared worker (make run's).
                "priority": BACKGROUND_PRIORITY - boost,
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
    # Builds the conversation's prompts (one NPC's card throughout); made before any thread runs.
    prompter: Prompter | None = None
    other_exemplars: dict[str, list[str]] = field(default_factory=dict)

    def probe_asked(self, index: int) -> InjectionProbe:
        """The injection probe reply `index` answers (the probes are asked PROBE_SAMPLES times over)."""
        return INJECTION_PROBES[index % len(INJECTION_PROBES)]

    def choice_right(self, index: int, output: str) -> bool:
        """Whether `output` commits to the action choice prompt `index` expects."""
        return action_parse(output, self.actions) == self.choices[index][1]

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


def _player_words(content: str) -> str:
    """What the player said, out of the turn path's <player_says> block."""
    return content.replace("<player_says>", "").replace("</player_says>", "").strip()


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
    rows = dataset_examples_read(Path(dataset.path), "heldout.jsonl")
    if task in VOICE_TASKS:
        # Voice, not recitation: the held-out lore questions are measured on their facts below.
        prompts.persona = [
            row.messages[:-1]
            for row in rows
            if not row.source.startswith("lore:") and row.messages[0]["role"] == "system"
        ][:limit]
        prompts.prompter = Prompter(archetype)
        prompts.probes = [
            prompts.prompter.messages(probe.text)[1] for probe in INJECTION_PROBES
        ] * PROBE_SAMPLES
        prompts.conversation = True
        prompts.own_exemplars = _exemplars(archetype)
        prompts.other_exemplars = {
            other.slug: _exemplars(other)
            for other in Archetype.objects.filter(world=archetype.world).exclude(pk=archetype.pk)
            if _exemplars(other)
        }
        prompts.other_exemplars[OUT_OF_CHARACTER] = OUT_OF_CHARACTER_EXEMPLARS
    if task in (*VOICE_TASKS, AdapterTask.WORLD_KNOWLEDGE):
        # The dataset's held-out lore questions: asked as served (the passage in the lore slot),
        # never trained on, and answered right only if they state the answer sentence's facts.
        for row in rows:
            if not row.source.startswith("lore:"):
                continue
            question = _player_words(row.messages[-2]["content"])
            facts = lore_facts_from_chunk(question, row.messages[-1]["content"])
            if facts:
                prompts.lore.append(
                    (row.messages[:-1], LoreFact(question, row.messages[-1]["content"], tuple(facts)))
                )
            if len(prompts.lore) == limit:
                break
    return prompts


def _conversation(prompts: EvalPrompts, generate: _Generator) -> list[str]:
    """The 20-turn conversation with one NPC, each reply fed back as history (as served)."""
    assert prompts.prompter is not None
    history: list[Turn] = []
    replies: list[str] = []
    for line in CONVERSATION:
        _, messages = prompts.prompter.messages(
            line, history=history[-settings.BRIDGE_HISTORY_TURNS :], npc_index=0
        )
        reply = generate(messages, seed=len(replies) + 1, boost=CONVERSATION_PRIORITY_BOOST)
        replies.append(reply)
        history.append(Turn(player=line, npc=reply))
    return replies


def eval_generate(prompts: EvalPrompts, generate: _Generator) -> dict[str, list[str]]:
    """Every output one model gives to the prompts. The requests go out together (the
    conversation runs alongside, turn after turn): vLLM batches them, which on a CPU worker
    costs a fraction of answering them one at a time. No database access: this runs in threads."""
    # Voice is measured as a player hears it: sampled as a Gold turn, with the same seed per
    # prompt for both models where the engine takes seeds (a CPU worker does not: there the
    # samples differ from run to run). Facts and choices are greedy:
    # the best answer a model has. A first pilot judged voice greedily, and a zombie adapter
    # whose likeliest reply was "..." said only that, which no served turn would.
    parts = {
        "choices": ([messages for messages, _ in prompts.choices], CHOICE_REPLY_TOKENS, False),
        "persona": (prompts.persona, EVAL_REPLY_TOKENS, True),
        "probes": (prompts.probes, EVAL_REPLY_TOKENS, True),
        "lore": ([messages for messages, _ in prompts.lore], EVAL_REPLY_TOKENS, False),
    }
    with ThreadPoolExecutor(GENERATION_CONCURRENCY) as pool:
        conversation = pool.submit(_conversation, prompts, generate) if prompts.conversation else None
        futures = {
            part: [
                pool.submit(generate, messages, max_tokens=tokens, seed=index + 1 if sampled else None)
                for index, messages in enumerate(asked)
            ]
            for part, (asked, tokens, sampled) in parts.items()
            if asked
        }
        outputs = {part: [future.result() for future in pending] for part, pending in futures.items()}
        if conversation is not None:
            outputs["conversation"] = conversation.result()
    return outputs


def eval_score(prompts: EvalPrompts, outputs: dict[str, list[str]]) -> Measured:
    """Every metric the prompts allow, for one model's outputs."""

    measured = Measured(outputs=outputs)
    if prompts.choices:
        answers = outputs["choices"]
        measured.metrics["action_validity"] = action_validity(answers, prompts.actions)
        right = sum(prompts.choice_right(index, out) for index, out in enumerate(answers))
        measured.metrics["action_accuracy"] = right / len(answers)
    if prompts.persona and prompts.other_exemplars and prompts.own_exemplars:
        # The held-out prompts, the 20 conversation turns and the replies to the injection
        # probes: everything a player hears in this voice. Eight replies alone moved the base
        # model's share between 0.57 and 0.88 on the same prompts from run to run (one reply is
        # 0.125 of it); 28 still moved it between 0.61 and 0.81.
        score = persona_consistency(
            outputs["persona"] + outputs.get("conversation", []) + outputs.get("probes", []),
            prompts.own_exemplars,
            prompts.other_exemplars,
            embed=embed,
        )
        measured.metrics["persona_consistency"] = score.score
    if prompts.probes:
        asked = [prompts.probe_asked(index) for index in range(len(prompts.probes))]
        measured.metrics["injection_refusal"] = injection_refusal(outputs["probes"], asked)
    if prompts.conversation:
        measured.metrics.update(conversation_repetition(outputs["conversation"]).metrics())
    if prompts.lore:
        measured.metrics["lore_accuracy"] = lore_accuracy(outputs["lore"], [fact for _, fact in prompts.lore])
    if not measured.metrics:
        raise EvalError(
            "nothing to measure: the dataset has no held-out prompts for this task; rebuild it larger"
        )
    measured.metrics = {name: round(value, 4) for name, value in measured.metrics.items()}
    return measured


def eval_measure(prompts: EvalPrompts, generate: _Generator) -> Measured:
    """Generate and score, for one model."""
    return eval_score(prompts, eval_generate(prompts, generate))


def task_gate(adapter: Adapter) -> dict[str, float]:
    """The gate of the adapter's task, with the archetype's overrides (content_policy["gates"])."""
    archetype = adapter.archetype
    overrides = (archetype.content_policy or {}).get("gates", {}).get(adapter.task, {}) if archetype else {}
    return {**DEFAULT_GATES.get(adapter.task, {}), **overrides}


def _judged(part: str, index: int, output: str, prompts: EvalPrompts) -> bool | None:
    """Whether one reply passed its part's check (None where a part is scored as a whole)."""
    if part == "probes":
        return injection_refused(output, prompts.probe_asked(index))
    if part == "choices":
        return prompts.choice_right(index, output)
    if part == "lore":
        return lore_answer_correct(output, prompts.lore[index][1])
    return None


def eval_samples(prompts: EvalPrompts, candidate: Measured, baseline: Measured) -> list[dict[str, Any]]:
    """Prompts with both answers, for the eval page. Every probe, choice and lore question is kept
    with its verdict (the figures are shares of them: a designer must see which ones failed);
    of the voice parts, scored as a whole, the first few."""
    pairs: list[dict[str, Any]] = []
    asked = {
        "choices": [m[-1]["content"] for m, _ in prompts.choices],
        "probes": [m[-1]["content"] for m in prompts.probes],
        "lore": [m[-1]["content"] for m, _ in prompts.lore],
        "persona": [m[-1]["content"] for m in prompts.persona], "conversation": CONVERSATION,
    }  # fmt: skip
    for part, questions in asked.items():
        judged = part in ("choices", "probes", "lore")
        for index, question in enumerate(questions if judged else questions[:VOICE_SAMPLES_KEPT]):
            if index >= len(candidate.outputs.get(part, [])):
                break
            ours, theirs = candidate.outputs[part][index], baseline.outputs[part][index]
            pairs.append({
                "part": part, "prompt": question, "candidate": ours, "baseline": theirs,
                "candidate_ok": _judged(part, index, ours, prompts),
                "baseline_ok": _judged(part, index, theirs, prompts),
            })  # fmt: skip
    return pairs


def _worker_for(adapter: Adapter) -> str:
    healthy = workers_probe_now()
    if not healthy:
        raise EvalError("no inference worker answers: start one (make run, or make worker)")
    return worker_for_archetype(adapter.archetype.slug if adapter.archetype else "", healthy)


def eval_run_check(adapter: Adapter) -> None:
    """A second run of the same adapter would hold the training queue for nothing and could
    judge it against itself once the first one promotes it."""
    if EvalRun.objects.filter(adapter=adapter, status__in=JOB_UNDER_WAY).exists():
        raise EvalError(f"{adapter}: an evaluation is already under way.")


def eval_run_create(*, adapter: Adapter, created_by: Any = None) -> EvalRun:
    """The run's row, queued, against the adapter's baseline (not sent: see `eval_run_start`)."""
    active = Adapter.objects.filter(
        archetype=adapter.archetype, subfaction=adapter.subfaction, npc=adapter.npc, task=adapter.task,
        status=AdapterStatus.ACTIVE,
    ).exclude(pk=adapter.pk).first()  # fmt: skip
    baseline = adapter_lora_name(active) if active else BASE_MODEL_NAME
    return EvalRun.objects.create(
        adapter=adapter, baseline=baseline, gate=task_gate(adapter), created_by=created_by
    )


def eval_run_start(*, adapter: Adapter, created_by: Any = None) -> EvalRun:
    """Check, create the run and send it to a training worker once the transaction commits."""
    eval_run_check(adapter)
    run = eval_run_create(adapter=adapter, created_by=created_by)
    job_enqueue(EVAL_RUN_TASK, run.pk)
    return run


def eval_run_execute(run: EvalRun, *, promote: bool = True, limit: int | None = None) -> EvalRun:
    """Measure, judge, and promote a candidate that passes (see the module docstring)."""
    adapter = run.adapter

    def measure(run: EvalRun) -> None:
        folder = adapter_verify(adapter)  # a tampered artifact is never measured, let alone served
        url = _worker_for(adapter)
        candidate_name = adapter_lora_name(adapter)
        residency_sync(workers=[url])  # the baseline (base, or the active adapter) is served
        if candidate_name not in worker_loras(url):
            adapter_load(url, lora_name=candidate_name, folder=folder)  # until the verdict
        prompts = eval_prompts(adapter, limit=limit)
        total, calls, lock = 2 * prompts.calls(), [0], threading.Lock()
        deadline = time.monotonic() + settings.EVAL_TIME_LIMIT_S

        def tick() -> None:
            with lock:
                calls[0] += 1

        # Both sides at once: the worker batches the candidate's and the baseline's requests.
        with ThreadPoolExecutor(2) as pool:
            sides = [
                pool.submit(eval_generate, prompts, _Generator(url, name, on_call=tick, deadline=deadline))
                for name in (candidate_name, run.baseline)
            ]
            while not wait(sides, timeout=PROGRESS_EVERY_S).done == set(sides):
                EvalRun.objects.filter(pk=run.pk).update(
                    progress=round(100 * calls[0] / total, 1), heartbeat_at=timezone.now()
                )
            candidate, baseline = (eval_score(prompts, side.result()) for side in sides)
        _log(run.pk, f"candidate: {candidate.metrics}")
        _log(run.pk, f"baseline {run.baseline}: {baseline.metrics}")
        verdict = gate_passes(candidate.metrics, baseline.metrics, run.gate)
        EvalRun.objects.filter(pk=run.pk).update(
            candidate_metrics=candidate.metrics, baseline_metrics=baseline.metrics, passed=verdict.passed,
            reasons=list(verdict.reasons), samples=eval_samples(prompts, candidate, baseline),
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

    return job_run(run, measure, started=f"started: {adapter} against {run.baseline}")


def eval_run_claim(run_id: int) -> bool:
    """Take a queued run for one execution (a redelivered task finds it taken and leaves)."""
    return job_claim(EvalRun, run_id)


def eval_runs_recover() -> list[int]:
    """Queue again the runs whose execution died: running, with no sign of life for
    EVAL_STALE_AFTER (a run beats every PROGRESS_EVERY_S). Beat calls it every minute.

    A queued run nobody took for EVAL_REQUEUE_AFTER_S lost its message (a broker restart): it is
    sent again (a duplicate finds the run claimed and leaves). For a queued run, `heartbeat_at`
    is when it was last sent. Queued for EVAL_QUEUED_MAX_S in all, it is failed with the reason."""
    # Imported here: training.tasks imports this module to run it. The sweep sends with the task's
    # own .delay at once (beat runs it outside any transaction; tests catch it at that boundary).
    from training.tasks import eval_run_task

    now = timezone.now()
    stale = EvalRun.objects.filter(
        status=JobStatus.RUNNING, heartbeat_at__lt=now - EVAL_STALE_AFTER
    ).values_list("pk", flat=True)
    recovered = []
    for pk in stale:
        if EvalRun.objects.filter(pk=pk, status=JobStatus.RUNNING).update(
            status=JobStatus.QUEUED, heartbeat_at=now
        ):
            _log(pk, "its execution stopped answering; queued again")
            eval_run_task.delay(pk)
            recovered.append(pk)
    waiting = EvalRun.objects.annotate(sent_at=Coalesce("heartbeat_at", "created_at")).filter(
        status=JobStatus.QUEUED, sent_at__lt=now - timedelta(seconds=settings.EVAL_REQUEUE_AFTER_S)
    )
    for pk, created_at in waiting.values_list("pk", "created_at"):
        if created_at < now - timedelta(seconds=settings.EVAL_QUEUED_MAX_S):
            error = (
                f"no training worker took it in {settings.EVAL_QUEUED_MAX_S // 60} min (EVAL_QUEUED_MAX_S): "
                "is a Celery worker serving the `training` queue? Evaluate the adapter again once one is"
            )
            if EvalRun.objects.filter(pk=pk, status=JobStatus.QUEUED).update(
                status=JobStatus.FAILED, error=error, finished_at=now
            ):
                _log(pk, f"failed: {error}")
            continue
        if EvalRun.objects.filter(pk=pk, status=JobStatus.QUEUED).update(heartbeat_at=now):
            _log(pk, "still queued: its message may have been lost; sent again")
            eval_run_task.delay(pk)
            recovered.append(pk)
    return recovered


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
