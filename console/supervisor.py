"""A small foreground process supervisor for `make run`.

Written by hand rather than with honcho/supervisord because `make run` needs three things
together that those tools do not give in one piece: a log file per process under var/log,
readiness waits (the vLLM worker takes 30 s to come up) before the next process starts,
and stopping everything, children of children included, on Ctrl-C or when one dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None


class Supervisor:
    """Start processes in order, each in its own process group; stop all of them together."""

    def __init__(self, *, log_dir: Path, cwd: Path) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.processes: list[ManagedProcess] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(name=name, argv=argv, log_path=self.log_dir / f"{name}.log", env=env or {})
        log = process.log_path.open("ab")
        process.popen = subprocess.Popen(
            list(argv),
            cwd=self.cwd,
            env={**os.environ, **process.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own group: Ctrl-C reaches us only, and we stop each group in order.
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def wait_until(self, process: ManagedProcess, ready: Callable[[], bool], *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if process.popen is not None and process.popen.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with code {process.popen.returncode}; see {process.log_path}"
                )
            time.sleep(0.25)
        raise RuntimeError(f"{process.name} was not ready after {timeout_s:.0f} s; see {process.log_path}")

    def first_exited(self) -> ManagedProcess | None:
        for process in self.processes:
            if process.popen is not None and process.popen.poll() is not None:
                return process
        return None

    def run_forever(self) -> int:
        """Block until Ctrl-C/SIGTERM or until a child exits; return the exit code to use."""
        stop = {"signal": 0}

        def _handler(signum: int, _frame: object) -> None:
            stop["signal"] = signum

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
        while not stop["signal"]:
            dead = self.first_exited()
            if dead is not None:
                assert dead.popen is not None
                print(
                    f"\n{dead.name} exited with code {dead.popen.returncode}; see {dead.log_path}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
        return 0

    def stop_all(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM every process group (newest first), then SIGKILL what is left after the grace."""
        for process in reversed(self.processes):
            if process.popen is not None and process.popen.poll() is None:
                print(f"stopping {process.name}…")
                _signal_group(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            if process.popen is None:
                continue
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.popen.pid, signal.SIGKILL)
                process.popen.wait()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
