"""The vLLM workers' API takes only our key: anyone else who reaches the port could load adapters
from any path, unload ours or use the GPU."""

from __future__ import annotations

import asyncio
import importlib
import sys

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from inference.engine import EngineClient
from inference.residency import worker_loras
from inference.workers import worker_argv, worker_env, worker_headers, worker_health


def test_workers_start_with_the_api_key_and_clients_send_it(settings):
    # Given a key in the settings (the environment's INFERENCE_API_KEY)
    settings.INFERENCE_API_KEY = "k" * 40

    # Then a worker starts with it as vLLM's API key, guarded on every route, and requests carry it
    assert worker_env()["VLLM_API_KEY"] == "k" * 40
    argv = worker_argv(model_path="/m", served_name="m", url="http://127.0.0.1:8100")
    assert argv[argv.index("--middleware") + 1] == "inference.worker_guard.WorkerKeyGuard"
    assert "k" * 40 not in " ".join(argv)  # the command line is visible to every local user
    assert worker_headers() == {"Authorization": f"Bearer {'k' * 40}"}


def test_production_settings_refuse_to_start_without_an_inference_api_key(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "x" * 60)
    monkeypatch.setenv("ALLOWED_HOSTS", "revenant.example.org")
    monkeypatch.setenv("METRICS_TOKEN", "m" * 40)
    monkeypatch.setenv("DATABASE_URL", "postgres://revenant:unused@db.invalid:5432/revenant")
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    sys.modules.pop("console.settings.production", None)
    try:
        with pytest.raises(ImproperlyConfigured, match="INFERENCE_API_KEY"):
            importlib.import_module("console.settings.production")
        monkeypatch.setenv("INFERENCE_API_KEY", "k" * 40)
        assert importlib.import_module("console.settings.production").INFERENCE_API_KEY == "k" * 40
    finally:
        sys.modules.pop("console.settings.production", None)


@pytest.mark.e2e
def test_a_worker_started_by_our_code_refuses_requests_without_the_key(vllm_worker):
    # Given the suite's worker, started by WorkerProcess like make run's
    url = vllm_worker.url

    # When a stranger asks it to list, load or generate without the key, or with a wrong one
    models = httpx.get(f"{url}/v1/models", timeout=10)
    load = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}, timeout=10)
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": vllm_worker.served_name, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer wrong"},
        timeout=10,
    )

    # Then it refuses each with 401
    assert [models.status_code, load.status_code, chat.status_code] == [401, 401, 401]
    # And so it does on the routes outside /v1 that vLLM's own key check leaves open, one of
    # which generates (SageMaker's /invocations); only health and metrics stay open
    chat_body = {
        "model": vllm_worker.served_name,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    }
    assert httpx.post(f"{url}/invocations", json=chat_body, timeout=30).status_code == 401
    assert httpx.post(f"{url}/tokenize", json={"prompt": "hi"}, timeout=10).status_code == 401
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200

    # And our clients, which send the key, are served: health, residency and the engine client
    assert worker_health(url).healthy
    assert isinstance(worker_loras(url), set)

    async def one_reply() -> str:
        engine = EngineClient(url)
        try:
            return "".join(
                [
                    piece
                    async for piece in engine.stream_chat(
                        model=vllm_worker.served_name,
                        messages=[{"role": "user", "content": "Hello"}],
                        max_tokens=4,
                        temperature=0.0,
                    )
                ]
            )
        finally:
            await engine.close()

    assert asyncio.run(one_reply())
