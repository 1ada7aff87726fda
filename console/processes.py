"""Child processes, started and stopped one way: `make run`'s supervisor, the vLLM worker of tests
and benchmarks (inference.workers.WorkerProcess), the end-to-end tests' Daphne, Celery and archiver
(tests/processes.py) and the benchmarks' Daphne processes (bench/stack.py).

Each child runs in its own process group with its output appended to a log file:
- its own group, so that a Ctrl-C in the terminal reaches the parent alone (which stops the
  children in order), and so that a stop reaches the child's own children too (vLLM starts an
  engine process that would otherwise outlive it, holding the port and the model's memory);
- a log file, because the parent's terminal is for the parent: a child that fails is reported
  with the path of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

Popen = subprocess.Popen[bytes]


class ProcessError(RuntimeError):
    """A child exited, or was not ready in time; the message names its log."""


def process_start(
    *,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Popen:
    """Start `argv` in a new process group, its stdout and stderr appended to `log_path`.

    `env` is added to this process's environment (a full environment passed here works too).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def ready_wait(
    check: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    every_s: float = 0.25,
    process: Popen | None = None,
    log_path: Path | None = None,
) -> T:
    """Poll `check` until it returns something true, and return that.

    Raises ProcessError when `process` exits first (a child that died will never be ready: no
    point waiting out the timeout) or when `timeout_s` passes; the message says `what` and where
    the log is.
    """
    see = f"; see {log_path}" if log_path is not None else ""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise ProcessError(f"{what}: the process exited with code {process.returncode}{see}")
        if time.monotonic() >= deadline:
            raise ProcessError(f"timed out waiting for {what} after {timeout_s:.0f} s{see}")
        time.sleep(every_s)


def process_group_signal(pid: int, signum: int) -> None:
    """Send `signum` to the process group led by `pid`; a group already gone is no error."""
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def processes_stop(processes: Sequence[Popen], *, grace_s: float = 10.0) -> None:
    """SIGTERM each process group (in the order given), wait up to `grace_s` in all, then SIGKILL
    what is left, and the leftovers of groups whose leader already exited (orphaned children)."""
    for process in processes:
        if process.poll() is None:
            process_group_signal(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process_group_signal(process.pid, signal.SIGKILL)
            process.wait()
        process_group_signal(process.pid, signal.SIGKILL)


def process_stop(process: Popen, *, grace_s: float = 10.0) -> None:
    """Stop one child and its process group: SIGTERM, then SIGKILL after `grace_s`."""
    processes_stop([process], grace_s=grace_s)


@contextmanager
def process_running(
    *,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready: Callable[[], object] | None = None,
    ready_timeout_s: float = 60.0,
    what: str = "the process to be ready",
    grace_s: float = 20.0,
) -> Iterator[Popen]:
    """`argv` running for the block (ready, when `ready` is given); stopped at its end."""
    process = process_start(argv=argv, log_path=log_path, env=env, cwd=cwd)
    try:
        if ready is not None:
            ready_wait(ready, timeout_s=ready_timeout_s, what=what, process=process, log_path=log_path)
        yield process
    finally:
        process_stop(process, grace_s=grace_s)
