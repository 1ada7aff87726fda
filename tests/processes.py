"""Processes the end-to-end tests start as `make run` does (Daphne, Celery, the archiver, a
Redis of their own), each with its output in a log file under TMPDIR."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connection

from bridge.server import daphne_argv
from console import localstack, processes
from console.processes import ProcessError, ready_wait


def wait_for(check: Callable[[], Any], *, timeout_s: float = 300, what: str, every_s: float = 1.0) -> Any:
    """Poll `check` until it returns something true (and return that), or fail saying `what`
    never happened: what the e2e tests wait on lives in other processes."""
    try:
        return ready_wait(check, timeout_s=timeout_s, what=what, every_s=every_s)
    except ProcessError as exc:
        raise AssertionError(str(exc)) from None


def process_log(name: str) -> Path:
    """Where a started process writes its output: read it when a test fails."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-e2e-{os.getpid()}.log"


@contextmanager
def process_running(name: str, argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` running for the block; stopped with SIGTERM (SIGKILL after 20 s) at its end."""
    with processes.process_running(
        argv=argv, log_path=process_log(name), env=env, cwd=localstack.PROJECT_DIR, grace_s=20
    ) as process:
        yield process


@contextmanager
def daphne_running(name: str, env: dict[str, str]) -> Iterator[str]:
    """Daphne (started like `make run` does) on a free port for the block; its ws:// URL."""
    port = localstack.free_port()
    with processes.process_running(
        argv=daphne_argv(host="127.0.0.1", port=port),
        log_path=process_log(name),
        env=env,
        cwd=localstack.PROJECT_DIR,
        ready=lambda: not localstack.port_is_free("127.0.0.1", port),
        ready_timeout_s=60,
        what="Daphne to listen",
        grace_s=20,
    ):
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
