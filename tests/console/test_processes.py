"""console.processes at the process boundary: real children, real process groups, real signals."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from console.processes import ProcessError, process_running, process_start, process_stop, ready_wait

# A child that ignores SIGTERM and starts a grandchild that does too: only SIGKILL of the whole
# group ends both (vLLM's API server and its engine process, at their worst).
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("grandchild", child.pid, flush=True)
time.sleep(600)
"""


def _pid_from_log(log: Path, prefix: str) -> int:
    line = ready_wait(
        lambda: next((x for x in log.read_text().splitlines() if x.startswith(prefix)), None),
        timeout_s=20,
        what=f"{prefix} in {log}",
        every_s=0.05,
    )
    return int(line.split()[1])


def test_a_stopped_child_takes_its_whole_process_group_along_even_when_it_ignores_sigterm(tmp_path):
    # Given a child in its own group, with a grandchild, both deaf to SIGTERM
    log = tmp_path / "stubborn.log"
    process = process_start(argv=[sys.executable, "-c", STUBBORN], log_path=log)
    grandchild = _pid_from_log(log, "grandchild")
    assert os.getpgid(process.pid) == process.pid != os.getpgid(0)  # its own group, not ours

    # When it is stopped with a short grace
    started = time.monotonic()
    process_stop(process, grace_s=0.5)

    # Then both are gone, soon after the grace
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the grandchild outlived the stop"
        time.sleep(0.05)


def test_waiting_for_a_child_that_exits_fails_at_once_naming_its_log(tmp_path):
    # Given a child that fails at start
    log = tmp_path / "broken.log"
    process = process_start(
        argv=[sys.executable, "-c", "import sys; print('bad setting'); sys.exit(3)"], log_path=log
    )

    # When something waits for it to be ready, for longer than it takes to fail
    started = time.monotonic()
    with pytest.raises(ProcessError, match=rf"broken to be ready: the process exited with code 3; see {log}"):
        ready_wait(lambda: False, timeout_s=60, what="broken to be ready", process=process, log_path=log)

    # Then the wait ends when the child does, and its output is in its log
    assert time.monotonic() - started < 30
    assert "bad setting" in log.read_text()


def test_waiting_for_something_that_never_happens_times_out_saying_what(tmp_path):
    with pytest.raises(ProcessError, match="timed out waiting for the moon after 0 s"):
        ready_wait(lambda: False, timeout_s=0.2, what="the moon", every_s=0.05)


def test_a_process_running_block_waits_for_readiness_and_stops_the_child_on_the_way_out(tmp_path):
    # Given a child that becomes ready (writes a file) after a moment
    flag = tmp_path / "ready"
    code = f"import pathlib, time; time.sleep(0.3); pathlib.Path({str(flag)!r}).touch(); time.sleep(600)"

    # When it runs for a block that asks for readiness
    with process_running(
        argv=[sys.executable, "-c", code],
        log_path=tmp_path / "child.log",
        ready=flag.exists,
        ready_timeout_s=20,
        grace_s=5,
    ) as process:
        # Then the block starts once it is ready
        assert (flag.exists(), process.poll()) == (True, None)

    # And the child is stopped after it
    assert process.poll() is not None
