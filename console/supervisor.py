"""A small foreground process supervisor for `make run`.

Written by hand rather than with a process manager, after looking at the maintained ones:
honcho starts and stops a Procfile but restarts nothing; supervisord (installed here as a
dependency of vLLM's) restarts with backoff but has no readiness ordering between programs (a
program counts as up `startsecs` after it starts, never when its HTTP health answers) and runs as
a daemon configured by an ini file and driven over XML-RPC; circus has hooks for readiness but
brings ZeroMQ and its own arbiter. `make run` needs, in one foreground process: a log file per
child under var/log, readiness waits (the vLLM worker takes 30-90 s) before the next step, work
when a child is ready again (the restarted worker's adapters), a restart count the ops page
reads, and stopping everything, children of children included, on Ctrl-C.

Restart policy: a child that exits is restarted after a backoff that doubles with each quick
failure (an exit within `startup_s` of its start) up to `backoff_max_s`; the others keep running.
Only a child that fails quickly `give_up_after` times within `give_up_window_s` (it cannot start:
a port taken, a broken setting) stops everything, as does Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from console.processes import process_group_signal, process_start, processes_stop, ready_wait


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    # Checked after a restart until true; then `on_ready` runs once (e.g. reload adapters).
    ready: Callable[[], bool] | None = None
    on_ready: Callable[[], None] | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_failures: list[float] = field(default_factory=list)  # when each quick exit happened
    restart_at: float | None = None  # set while the child waits out its backoff
    awaiting_ready: bool = False


@dataclass(frozen=True)
class RestartPolicy:
    # An exit within this long of the start is a failure to start (the vLLM worker loads its
    # model for 30-90 s on CPU, and a crash while loading is one).
    startup_s: float = 120.0
    backoff_first_s: float = 1.0
    backoff_max_s: float = 30.0
    # A child that cannot start (5 quick failures in 10 minutes) stops everything: restarting it
    # forever would hide a broken setting behind a log nobody reads.
    give_up_after: int = 5
    give_up_window_s: float = 600.0


class Supervisor:
    """Start processes in order, each in its own process group; restart one that dies; stop all
    of them together."""

    def __init__(
        self,
        *,
        log_dir: Path,
        cwd: Path,
        policy: RestartPolicy | None = None,
        on_restart: Callable[[ManagedProcess], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.policy = policy or RestartPolicy()
        self.on_restart = on_restart
        self.processes: list[ManagedProcess] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> ManagedProcess:
        process = ManagedProcess(
            name=name,
            argv=argv,
            log_path=self.log_dir / f"{name}.log",
            env=env or {},
            ready=ready,
            on_ready=on_ready,
        )
        self._spawn(process)
        self.processes.append(process)
        return process

    def _spawn(self, process: ManagedProcess) -> None:
        # Its own group (console.processes): Ctrl-C reaches us only, and we stop each group in order.
        process.popen = process_start(
            argv=process.argv, log_path=process.log_path, env=process.env, cwd=self.cwd
        )
        process.started_at = time.monotonic()
        process.restart_at = None

    def wait_until(self, process: ManagedProcess, ready: Callable[[], bool], *, timeout_s: float) -> None:
        """Wait for `ready`; ProcessError (a RuntimeError) when the child exits or time runs out."""
        ready_wait(
            ready,
            timeout_s=timeout_s,
            what=f"{process.name} to be ready",
            process=process.popen,
            log_path=process.log_path,
        )

    def first_exited(self) -> ManagedProcess | None:
        for process in self.processes:
            if process.popen is not None and process.popen.poll() is not None and process.restart_at is None:
                return process
        return None

    def tend(self, *, now: float | None = None) -> ManagedProcess | None:
        """One round of the restart policy: schedule the restart of children that exited, start
        those whose backoff is over, run `on_ready` for restarted children now ready. Returns a
        child that keeps failing at start (the caller stops everything), else None."""
        now = time.monotonic() if now is None else now
        policy = self.policy
        for process in self.processes:
            assert process.popen is not None
            if process.restart_at is not None:
                if now >= process.restart_at:
                    self._spawn(process)
                    process.restarts += 1
                    process.awaiting_ready = process.on_ready is not None
                    _say(f"{process.name} restarted (restart {process.restarts}); log: {process.log_path}")
                    if self.on_restart is not None:
                        self.on_restart(process)
                continue
            code = process.popen.poll()
            if code is None:
                if process.awaiting_ready and (process.ready is None or process.ready()):
                    process.awaiting_ready = False
                    assert process.on_ready is not None
                    process.on_ready()
                continue
            # Orphans of the dead child (vLLM's engine process) would hold its port and memory.
            process_group_signal(process.popen.pid, signal.SIGKILL)
            if now - process.started_at < policy.startup_s:
                process.quick_failures.append(now)
            else:
                process.quick_failures.clear()  # it ran well: a new crash starts a new count
            process.quick_failures = [t for t in process.quick_failures if now - t <= policy.give_up_window_s]
            if len(process.quick_failures) >= policy.give_up_after:
                _say(
                    f"{process.name} exited with code {code}, {len(process.quick_failures)} times within "
                    f"{policy.give_up_window_s:.0f} s of starting: giving up; see {process.log_path}"
                )
                return process
            backoff = min(
                policy.backoff_max_s, policy.backoff_first_s * 2 ** max(0, len(process.quick_failures) - 1)
            )
            process.restart_at = now + backoff
            _say(
                f"{process.name} exited with code {code}; restarting in {backoff:.1f} s; "
                f"see {process.log_path}"
            )
        return None

    def run_forever(self, *, tick_s: float = 0.5) -> int:
        """Keep the children running until Ctrl-C/SIGTERM (0) or until one keeps failing to
        start (1); the exit code to use."""
        stop = {"signal": 0}

        def _handler(signum: int, _frame: object) -> None:
            stop["signal"] = signum

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
        while not stop["signal"]:
            if self.tend() is not None:
                return 1
            time.sleep(tick_s)
        return 0

    def stop_all(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM every process group (newest first), then SIGKILL what is left after the grace."""
        # Exited ones too: processes_stop also kills what their group left behind (an orphaned engine).
        children = []
        for process in reversed(self.processes):
            process.restart_at = None
            if process.popen is None:
                continue
            if process.popen.poll() is None:
                print(f"stopping {process.name}…")
            children.append(process.popen)
        processes_stop(children, grace_s=grace_s)


def _say(line: str) -> None:
    print(f"[supervisor {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# How many times `make run` restarted each child, for the ops page (Redis: every process of the
# console reads the same figures; kept across `make run`s, so a crash loop is visible later).
RESTARTS_KEY = "ops:restarts"


def supervisor_restart_record(*, redis_url: str, name: str) -> None:
    """Count a child's restart where the ops page reads it; never fails the supervisor."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=2) as client:
            client.hincrby(RESTARTS_KEY, name, 1)
    except redis.RedisError as exc:
        _say(f"could not count the restart of {name}: {exc}")


def supervisor_restarts(client: redis.Redis) -> dict[str, int]:
    """Restarts per child of `make run`, as counted by supervisor_restart_record."""
    counts: dict[bytes, bytes] = client.hgetall(RESTARTS_KEY)  # type: ignore[assignment]  # sync client
    return {name.decode(): int(count) for name, count in sorted(counts.items())}
