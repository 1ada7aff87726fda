"""Processes the end-to-end tests start as `make run` does (Daphne, Celery, the archiver, a
Redis of their own), each with its output in a log file under TMPDIR."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connection

from bridge.server import daphne_argv
from console import localstack


def wait_for(check: Callable[[], Any], *, timeout_s: float = 300, what: str, every_s: float = 1.0) -> Any:
    """Poll `check` until it returns something true (and return that), or fail saying `what`
    never happened: what the e2e tests wait on lives in other processes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def process_log(name: str) -> Path:
    """Where a started process writes its output: read it when a test fails."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-e2e-{os.getpid()}.log"


@contextmanager
def process_running(name: str, argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` running for the block; stopped with SIGTERM (SIGKILL after 20 s) at its end."""
    with process_log(name).open("ab") as output:
        process = subprocess.Popen(
            argv, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=localstack.PROJECT_DIR
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def daphne_running(name: str, env: dict[str, str]) -> Iterator[str]:
    """Daphne (started like `make run` does) on a free port for the block; its ws:// URL."""
    port = localstack.free_port()
    with process_running(name, daphne_argv(host="127.0.0.1", port=port), env) as process:
        deadline = time.monotonic() + 60
        while localstack.port_is_free("127.0.0.1", port):
            assert process.poll() is None, f"Daphne exited; see {process_log(name)}"
            assert time.monotonic() < deadline, "Daphne did not listen within 60 s"
            time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/ws/game/"


def subprocess_database_env() -> dict[str, str]:
    """The environment of a process that must use the test database (and test settings)."""
    database = connection.settings_dict
    url = localstack.env_database_url()
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings.test",
        "DATABASE_URL": localstack.embedded_postgres_url(database=database["NAME"])
        if not url
        else re.sub(r"/[^/?]+(\?|$)", f"/{database['NAME']}\\1", url),
    }
