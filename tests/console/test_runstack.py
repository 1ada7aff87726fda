"""`make run`'s command end to end: real Daphne, Celery worker and beat on real Postgres and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import psutil
import psycopg
import pytest
import redis
from django.conf import settings

from console import localstack
from console.localstack import free_port
from console.supervisor import RESTARTS_KEY
from inference.workers import worker_health

pytestmark = pytest.mark.e2e

E2E_DATABASE = "revenant_e2e"
E2E_REDIS_URL = "redis://127.0.0.1:6379/10"


def _fresh_database_url() -> str:
    admin_url = localstack.embedded_postgres_url(database="postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{E2E_DATABASE}" WITH (FORCE)')
    return localstack.embedded_postgres_url(database=E2E_DATABASE)


def _health_status(port: int) -> int:
    try:
        with urlopen(f"http://127.0.0.1:{port}/health/", timeout=10) as response:
            return int(response.status)
    except HTTPError as exc:
        return exc.code


# And, since make run restarts a child that dies, a killed vLLM worker comes back meanwhile.
def test_runstack_serves_health_and_admin_then_stops_every_child_on_ctrl_c():
    # Given a fresh database and an empty Redis database
    database_url = _fresh_database_url()
    redis.Redis.from_url(E2E_REDIS_URL).flushdb()
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings.dev",
        "SECRET_KEY": "e2e-" + "x" * 60,
        "DATABASE_URL": database_url,
        "REDIS_URL": E2E_REDIS_URL,
        "ADMIN_PASSWORD": "e2e-admin-password-1234",
        "HEALTH_REQUIRE_CELERY": "true",
        "METRICS_TOKEN": "e2e-monitoring-token",  # /health/ details are for ops and monitors
        # Its own vLLM worker on a free port, started by runstack like `make run` does.
        "INFERENCE_WORKERS": f"http://127.0.0.1:{free_port()}",
        "INFERENCE_START_WORKER": "true",
        # The key the worker requires; this process's clients (worker_health) send the same.
        "INFERENCE_API_KEY": settings.INFERENCE_API_KEY,
    }
    # When make run's command starts
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--port", str(port)],
        cwd=localstack.PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 600  # the vLLM worker alone takes 60-120 s on 2 busy cores
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            output.append(line)
            if "Revenant is up" in line:
                break
        assert any("Revenant is up" in line for line in output), "".join(output)

        # Then health is 200 with a Celery worker answering, and the admin login page is served
        health = Request(
            f"http://127.0.0.1:{port}/health/", headers={"Authorization": "Bearer e2e-monitoring-token"}
        )
        with urlopen(health, timeout=10) as response:
            body = json.load(response)
            assert response.status == 200
        assert body["checks"]["celery"] == {**body["checks"]["celery"], "status": "ok", "required": True}
        assert body["checks"]["workers"] == {**body["checks"]["workers"], "status": "ok", "required": True}
        with urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=10) as response:
            assert response.status == 200
            assert b"Revenant console" in response.read()
        assert "Account 'admin': password set from the environment." in "".join(output)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # daphne, celery worker, celery beat, the vLLM worker (and its engine)

        # When the vLLM worker is killed (kill -9 of it and its engine)
        worker_url = env["INFERENCE_WORKERS"]
        (worker,) = [child for child in children if "vllm.entrypoints.openai.api_server" in child.cmdline()]
        os.killpg(worker.pid, signal.SIGKILL)
        # Then the stack keeps running: Daphne answers while the worker is away
        time.sleep(3)
        assert proc.poll() is None
        assert _health_status(port) in (200, 503)
        # And the supervisor restarts the worker, counts the restart and reloads its base adapter
        deadline = time.monotonic() + 300
        while not (health := worker_health(worker_url, timeout_s=5)).healthy or "base" not in health.models:
            assert time.monotonic() < deadline, f"the worker did not come back with its adapters: {health}"
            assert proc.poll() is None
            time.sleep(2)
        assert redis.Redis.from_url(E2E_REDIS_URL).hget(RESTARTS_KEY, "vllm-worker") == b"1"
        assert _health_status(port) == 200
        children = psutil.Process(proc.pid).children(recursive=True)

        # And Ctrl-C stops every process it started
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.5)
        alive = [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        assert alive == []
        assert localstack.port_is_free("127.0.0.1", port)
    finally:
        if proc.poll() is None:
            # A failed run must not leave Daphne and Celery workers behind for the next tests.
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
