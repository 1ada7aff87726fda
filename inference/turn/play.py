"""Stage 3 of a turn, play: the NPC answers, streamed, with an emotion and an action.

Three requests run in parallel on the NPC's worker, each through its task's adapter:
dialogue (streamed), emotional_response and action_policy (structured output with enums, so
the emotion and action are always valid). Nothing here touches the database: the caller
passes a TurnContext built at conversation start, and the plan's tier and the inputs' memory,
lore and recent turns (inference.turn.plan, inference.turn.inputs).

Fallbacks, each logged and counted: a task without an active adapter runs on the base model
with the persona prompt (adapter_missing); a worker that is down or misses the tier's deadline
gives a bark from the archetype's table (worker_down, deadline); a reply that breaks the
fourth wall is cut, or replaced by a bark when nothing is left (guardrail).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from django.conf import settings

from console.services.adapters import BASE_MODEL_NAME
from inference import metrics
from inference.context import TurnContext
from inference.engine import EngineClient, StreamUsage
from inference.guardrails import ReplyPolicy, StreamGuard, player_text_clean, special_token_strings
from inference.prompts import AssembledPrompt, PromptParts, Turn, prompt_assemble, tokenizer_counter
from inference.routing import NoHealthyWorker, worker_for_archetype
from inference.sampling import TierSampling, tier_sampling
from inference.workers import worker_mark_down

logger = logging.getLogger(__name__)


@dataclass
class TurnResult:
    text: str
    emotion: str
    action: str
    tier: str
    worker: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    usage: StreamUsage = field(default_factory=StreamUsage)
    ttft_ms: float | None = None
    total_ms: float = 0.0
    prompt_sections: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)  # what the dialogue request sent
    sampling: dict[str, Any] = field(default_factory=dict)  # what the dialogue request asked for
    # Parts of total_ms: assembling the prompt, and the emotion/action requests from their start
    # to their end (None: the part did not run, e.g. a bark or a deadline).
    parts_ms: dict[str, float | None] = field(default_factory=lambda: {"prompt_ms": None, "choices_ms": None})


DeltaSink = Callable[[str], Awaitable[None]]

# Engine failures that mean "the worker is not there", as opposed to a bug of ours.
WORKER_ERRORS: tuple[type[BaseException], ...] = (
    openai.APIConnectionError,
    openai.APITimeoutError,
    openai.InternalServerError,
    httpx.HTTPError,
    ConnectionError,
)


CHOICE_ERRORS: tuple[type[BaseException], ...] = (ValueError, openai.APIError, *WORKER_ERRORS)


def bark_pick(context: TurnContext, situation: str = "greet", *, rng: random.Random | None = None) -> str:
    lines = context.barks.get(situation) or context.barks.get("idle") or ["..."]
    return (rng or random).choice(lines)


def _fallback(result: TurnResult, reason: str) -> None:
    result.fallbacks.append(reason)
    metrics.FALLBACKS.labels(reason=reason).inc()
    logger.warning("turn fallback %s for %s", reason, result.adapters.get("dialogue_style", "?"))


def _choice_messages(messages: list[dict[str, str]], question: str) -> list[dict[str, str]]:
    # Same system message as the dialogue: the worker reuses its cached prefix.
    return [*messages, {"role": "user", "content": question}]


# Per event loop (an HTTP connection pool belongs to the loop that opened it), per worker.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EngineClient]] = (
    weakref.WeakKeyDictionary()
)


def engine_for(url: str) -> EngineClient:
    """The client for a worker on the running loop; connection pools are reused across turns."""
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(url)
    if client is None:
        client = per_loop[url] = EngineClient(url, timeout_s=max(settings.TURN_DEADLINES_S.values()) + 5)
    return client


async def turn_run(
    *,
    context: TurnContext,
    player_text: str,
    workers: Sequence[str],
    history: Sequence[Turn] = (),
    memory: str = "",
    lore: str = "",
    tier: str = "gold",
    on_delta: DeltaSink | None = None,
    greedy: bool = False,
    seed: int | None = None,
    sampling: TierSampling | None = None,
    prompt: AssembledPrompt | None = None,
) -> TurnResult:
    """Run one turn. `workers` are the healthy workers; `on_delta` receives each safe text piece.
    `sampling` replaces the tier's, `prompt` the one assembled from the parts (a replay's)."""
    started = time.perf_counter()
    if seed is None:
        seed = settings.TURN_SEED
    sampling = sampling or tier_sampling(tier)
    metrics.TURNS.labels(tier=tier).inc()
    result = TurnResult(text="", emotion="neutral", action=_default_action(context), tier=tier)
    result.adapters = dict(context.routes)
    for missing in context.missing_adapters:
        _fallback(result, f"adapter_missing:{missing}")

    async def emit(piece: str) -> None:
        if not piece:
            return
        if result.ttft_ms is None:
            result.ttft_ms = (time.perf_counter() - started) * 1000
            metrics.TTFT.labels(tier=tier).observe(result.ttft_ms / 1000)
        result.text += piece
        if on_delta is not None:
            await on_delta(piece)

    if not sampling.uses_model:
        await emit(bark_pick(context))
        return _finish(result, started)
    try:
        worker = worker_for_archetype(context.archetype_slug, workers)
    except NoHealthyWorker:
        _fallback(result, "worker_down")
        await emit(bark_pick(context))
        return _finish(result, started)
    result.worker = worker
    engine = engine_for(worker)

    assembling = time.perf_counter()
    prompt = prompt or prompt_assemble(
        PromptParts(
            persona=context.persona,
            subfaction=context.subfaction_text,
            npc_card=context.npc_card,
            memory=memory,
            lore=lore,
            history=history,
            player_text=player_text_clean(player_text),
        ),
        budget_tokens=settings.WORKER_MAX_MODEL_LEN - sampling.max_tokens - 16,
        count=tokenizer_counter(context.model_path),
        special_tokens=special_token_strings(context.model_path),
    )
    result.parts_ms["prompt_ms"] = (time.perf_counter() - assembling) * 1000
    result.prompt_sections, result.dropped, result.messages = prompt.sections, prompt.dropped, prompt.messages
    result.sampling = {
        "greedy": greedy, "max_tokens": sampling.max_tokens,
        "temperature": 0.0 if greedy else sampling.temperature, "top_p": 1.0 if greedy else sampling.top_p,
        "repetition_penalty": 1.0 if greedy else sampling.repetition_penalty, "seed": seed,
        "priority": sampling.priority, "deadline_s": sampling.deadline_s,
    }  # fmt: skip
    guard = StreamGuard(
        ReplyPolicy(blocked_terms=context.blocked_terms, persona=context.persona),
        max_chars=sampling.max_tokens * 6,
    )
    temperature = 0.0 if greedy else sampling.temperature

    async def dialogue() -> None:
        model = context.routes["dialogue_style"]
        try:
            await dialogue_stream(model)
        except openai.NotFoundError:
            # Not loaded on this worker (retired since the context was read, or the worker restarted
            # and residency has not caught up): the base model with the persona prompt instead.
            if result.text or model == BASE_MODEL_NAME:
                raise
            _fallback(result, "adapter_not_loaded:dialogue_style")
            result.adapters["dialogue_style"] = BASE_MODEL_NAME
            await dialogue_stream(BASE_MODEL_NAME)

    async def dialogue_stream(model: str) -> None:
        async for delta in engine.stream_chat(
            model=model,
            messages=prompt.messages,
            max_tokens=sampling.max_tokens,
            temperature=temperature,
            top_p=1.0 if greedy else sampling.top_p,
            repetition_penalty=1.0 if greedy else sampling.repetition_penalty,
            seed=seed,
            usage=result.usage,
            priority=sampling.priority,
        ):
            choices_start()
            await emit(guard.feed(delta))
            if guard.stopped:
                break  # closing the stream aborts generation on the worker
        await emit(guard.finish())

    # Emotion and action are asked once the dialogue's first token is out, not with it: the
    # dialogue's prefill then runs alone (the player waits for it). Kinds whose tasks share a
    # route (both on the base model, or one adapter for both) are one request with one prefill;
    # two requests sent together would each prefill the whole prompt (docs/performance.md).
    choice_tasks: list[asyncio.Task[dict[str, str | None]]] = []
    choices_started = 0.0

    def choices_start() -> None:
        nonlocal choices_started
        if not choice_tasks:
            choices_started = time.perf_counter()
            choice_tasks.extend(
                asyncio.create_task(
                    structured_choices(
                        engine,
                        context=context,
                        messages=prompt.messages,
                        kinds=kinds,
                        seed=seed,
                        priority=sampling.priority,
                    )  # fmt: skip
                )
                for kinds in choice_requests(context)
            )

    try:
        async with asyncio.timeout(sampling.deadline_s):
            await dialogue()
            choices_start()
            chosen = {
                kind: value
                for answer in await asyncio.gather(*choice_tasks)
                for kind, value in answer.items()
            }
            result.parts_ms["choices_ms"] = (time.perf_counter() - choices_started) * 1000
            emotion, action = chosen.get("emotion"), chosen.get("action")
    except TimeoutError:
        _fallback(result, "deadline")
        emotion = action = None
    except WORKER_ERRORS as exc:
        logger.warning("worker %s failed mid-turn: %s", worker, exc)
        worker_mark_down(worker)  # the archetype's next turn goes to the next healthy worker
        _fallback(result, "worker_down")
        emotion = action = None
    except openai.NotFoundError as exc:
        # The worker does not serve BASE_MODEL_NAME, which every other route falls back to: it
        # was started by something other than worker_argv. A worker fault, not ours: the player
        # gets a bark, and the worker is routed around until its next probe.
        logger.warning("worker %s does not serve %s (not started by us?): %s", worker, BASE_MODEL_NAME, exc)
        worker_mark_down(worker)
        _fallback(result, "worker_down")
        emotion = action = None
    finally:
        for pending in choice_tasks:
            pending.cancel()

    if guard.violation:
        _fallback(result, "guardrail")
    if emotion is None or action is None:
        if "deadline" not in result.fallbacks and "worker_down" not in result.fallbacks:
            _fallback(result, "structured_failed")
    result.emotion = emotion or "neutral"
    result.action = action or _default_action(context)
    if not result.text.strip():
        # Nothing usable was said (worker gone before the first token, or all of it cut).
        await emit(bark_pick(context))
    elif {"deadline", "worker_down"} & set(result.fallbacks):
        await emit(" … " + bark_pick(context, "farewell"))
    return _finish(result, started)


CHOICES = {
    # kind -> (its task, the question it answers)
    "emotion": ("emotional_response", "How does {name} feel hearing this?"),
    "action": ("action_policy", "What does {name} do now?"),
}


def choice_requests(context: TurnContext) -> list[tuple[str, ...]]:
    """The kinds to ask together: one request per route (task adapter, or the base model)."""
    by_route: dict[str, list[str]] = {}
    for kind, (task, _) in CHOICES.items():
        by_route.setdefault(context.routes[task], []).append(kind)
    return [tuple(kinds) for kinds in by_route.values()]


async def structured_choices(
    engine: EngineClient,
    *,
    context: TurnContext,
    messages: list[dict[str, str]],
    kinds: Sequence[str],
    seed: int | None = None,
    priority: int = 0,
) -> dict[str, str | None]:
    """The NPC's emotion and/or action for this moment, from vLLM's structured output (one enum
    per kind, in one JSON object).

    Runs on the kinds' shared route (their task's adapter, or the base model). A kind is None
    when the call fails or its answer is not an allowed one; the caller falls back to neutral
    and the default action.
    """
    options = {"emotion": context.emotions, "action": context.actions}
    tasks = {CHOICES[kind][0] for kind in kinds}
    (route,) = {context.routes[task] for task in tasks}
    schema = {
        "type": "object",
        "properties": {kind: {"type": "string", "enum": list(options[kind])} for kind in kinds},
        "required": list(kinds),
        "additionalProperties": False,
    }
    questions = " ".join(CHOICES[kind][1].format(name=context.npc_name) for kind in kinds)
    question_messages = _choice_messages(messages, f"{questions} Answer with JSON.")
    try:
        try:
            value = await engine.complete_json(
                model=route, messages=question_messages, schema=schema, seed=seed, priority=priority,
            )  # fmt: skip
        except openai.NotFoundError:
            if route == BASE_MODEL_NAME:
                raise
            # The adapter is not loaded on this worker (see dialogue): the base model answers.
            logger.warning("structured %s: %s not loaded, using the base model", "+".join(kinds), route)
            value = await engine.complete_json(
                model=BASE_MODEL_NAME, messages=question_messages, schema=schema, seed=seed,
                priority=priority,
            )  # fmt: skip
    except CHOICE_ERRORS as exc:
        logger.warning("structured %s failed: %s", "+".join(kinds), exc)
        return dict.fromkeys(kinds)
    return {kind: value.get(kind) if value.get(kind) in options[kind] else None for kind in kinds}


def _default_action(context: TurnContext) -> str:
    for name in ("talk", "idle"):
        if name in context.actions:
            return name
    return context.actions[0] if context.actions else "idle"


def _finish(result: TurnResult, started: float) -> TurnResult:
    result.total_ms = (time.perf_counter() - started) * 1000
    metrics.TURN_SECONDS.labels(tier=result.tier).observe(result.total_ms / 1000)
    return result


def turn_result_payload(result: TurnResult) -> dict[str, Any]:
    """The JSON a client or a trace sees."""
    return {
        "text": result.text,
        "emotion": result.emotion,
        "action": result.action,
        "tier": result.tier,
        "worker": result.worker,
        "adapters": result.adapters,
        "fallbacks": result.fallbacks,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
        },
        "timing": {
            "ttft_ms": _ms(result.ttft_ms),
            "total_ms": _ms(result.total_ms),
            **{part: _ms(value) for part, value in result.parts_ms.items()},
        },
        "prompt_sections": result.prompt_sections,
        "dropped": result.dropped,
        "sampling": result.sampling,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
