"""The client side of a vLLM worker's OpenAI-compatible API.

The official `openai` client does the HTTP, SSE parsing and errors; closing a stream closes
the connection, and vLLM aborts the generation (a cancelled turn frees its slot at once).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

# The priority of work no player waits on (evals, memory summaries): after every turn. Turns
# use their tier's (inference.sampling.TierSampling.priority); lower is scheduled first.
BACKGROUND_PRIORITY = 10


@dataclass
class StreamUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EngineClient:
    """One worker. Cheap to create; reuse one per worker URL for its connection pool."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            # The key the workers require (INFERENCE_API_KEY); a placeholder for an open worker,
            # since the client refuses to start without one.
            api_key=settings.INFERENCE_API_KEY or "no-key",
            max_retries=0,  # a retry would blow the turn's deadline; fallbacks handle failures
            timeout=timeout_s,
        )

    async def stream_chat(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        usage: StreamUsage | None = None,
        ignore_eos: bool = False,
        priority: int = 0,
    ) -> AsyncIterator[str]:
        """Yield text deltas; keep `usage` up to date as they come. A lower `priority` is scheduled
        first (the worker runs vLLM's priority policy; inference.sampling.TierSampling.priority)."""
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stream": True,
            # Usage on every chunk (vLLM's continuous_usage_stats), not only on the final one: a
            # caller that stops reading early (the guard cut the reply, the turn was cancelled)
            # closes the stream before that chunk, and its tokens were recorded as 0.
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            # vLLM's own parameters: benchmarks use ignore_eos to generate exactly max_tokens.
            "extra_body": {
                **({"ignore_eos": True} if ignore_eos else {}),
                **({"repetition_penalty": repetition_penalty} if repetition_penalty != 1.0 else {}),
                **({"priority": priority} if priority else {}),
            }
            or None,
        }
        # The client's overloads want its TypedDicts; plain dicts are what goes on the wire.
        stream = cast(AsyncStream[ChatCompletionChunk], await self._client.chat.completions.create(**request))
        try:
            async for chunk in stream:
                if chunk.usage is not None and usage is not None:
                    usage.prompt_tokens = chunk.usage.prompt_tokens
                    usage.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
        finally:
            await stream.close()

    async def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        max_tokens: int = 48,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        priority: int = 0,
    ) -> dict[str, Any]:
        """A greedy completion constrained by vLLM's structured output to `schema`."""
        extra = {
            **({"repetition_penalty": repetition_penalty} if repetition_penalty != 1.0 else {}),
            **({"priority": priority} if priority else {}),
        }
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "choice", "schema": schema}},
            "extra_body": extra or None,
        }
        response = cast(ChatCompletion, await self._client.chat.completions.create(**request))
        content = response.choices[0].message.content or ""
        value = json.loads(content)
        if not isinstance(value, dict):
            raise ValueError(f"structured output is not an object: {content[:80]!r}")
        return value

    async def close(self) -> None:
        await self._client.close()
