"""`make run`'s supervisor at the process boundary: real child processes, a real supervisor
process, real signals. A child that dies is restarted with backoff while the others keep running;
only Ctrl-C, or a child that keeps failing at start, stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from console import localstack
from console.supervisor import supervisor_restart_record, supervisor_restarts

SUPERVISOR_SCRIPT = """
import sys
from pathlib import Path
from console.supervisor import RestartPolicy, Supervisor

log_dir = Path(sys.argv[1])
policy = RestartPolicy(startup_s=10.0, backoff_first_s=0.2, backoff_max_s=1.0, give_up_after=3,
                       give_up_window_s=30)
supervisor = Supervisor(log_dir=log_dir, cwd=log_dir, policy=policy,
                        on_restart=lambda p: print("restarted", p.name, p.popen.pid, flush=True))
for name, code in zip(sys.argv[2::2], sys.argv[3::2]):
    child = supervisor.start(name, [sys.executable, "-c", code],
                             ready=lambda: True, on_ready=lambda name=name: print("ready", name, flush=True))
    print("started", name, child.popen.pid, flush=True)
exit_code = supervisor.run_forever(tick_s=0.1)
supervisor.stop_all(grace_s=5)
sys.exit(exit_code)
"""
SLEEPER = "import time; time.sleep(600)"


def _supervisor(tmp_path: Path, children: dict[str, str]) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", SUPERVISOR_SCRIPT, str(tmp_path)]
    for name, code in children.items():
        argv += [name, code]
    return subprocess.Popen(
        argv, cwd=localstack.PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _line_with(process: subprocess.Popen[str], prefix: str, seen: list[str], *, timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line {prefix!r} in {''.join(seen)}")


def _pid(line: str) -> int:
    return int(line.split()[-1])


def test_a_child_that_dies_is_restarted_and_the_others_keep_running(tmp_path):
    # Given a supervisor with two running children
    supervisor = _supervisor(tmp_path, {"steady": SLEEPER, "victim": SLEEPER})
    seen: list[str] = []
    try:
        steady = _pid(_line_with(supervisor, "started steady", seen))
        victim = _pid(_line_with(supervisor, "started victim", seen))

        # When one is killed as the vLLM worker was (kill -9)
        os.kill(victim, signal.SIGKILL)

        # Then it comes back as a new process, is waited for until ready, and logged
        restarted = _pid(_line_with(supervisor, "restarted victim", seen))
        _line_with(supervisor, "ready victim", seen)
        assert restarted != victim
        assert psutil.pid_exists(restarted)
        assert any("victim exited with code -9; restarting in" in line for line in seen)
        # And the supervisor and the other child never stopped
        assert supervisor.poll() is None
        assert psutil.Process(steady).is_running()

        # When Ctrl-C comes, Then everything stops and the exit code is 0
        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(timeout=20) == 0
        for pid in (steady, restarted):
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def test_a_child_that_keeps_failing_at_start_stops_everything(tmp_path):
    # Given a child that cannot start (it exits at once, every time) beside a healthy one
    supervisor = _supervisor(tmp_path, {"steady": SLEEPER, "broken": "import sys; sys.exit(3)"})
    seen: list[str] = []
    try:
        steady = _pid(_line_with(supervisor, "started steady", seen))

        # When the supervisor has retried it with backoff, Then it gives up and stops everything
        assert supervisor.wait(timeout=30) == 1
        assert supervisor.stdout is not None
        seen.append(supervisor.stdout.read())
        output = "".join(seen)
        assert output.count("restarted broken") == 2  # started once, restarted twice, then given up
        assert "broken exited with code 3, 3 times within 30 s of starting: giving up" in output
        assert not psutil.pid_exists(steady) or psutil.Process(steady).status() == psutil.STATUS_ZOMBIE
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def test_restarts_are_counted_per_child_for_the_ops_page(redis_client, settings):
    supervisor_restart_record(redis_url=settings.REDIS_URL, name="vllm-worker")
    supervisor_restart_record(redis_url=settings.REDIS_URL, name="vllm-worker")
    supervisor_restart_record(redis_url=settings.REDIS_URL, name="daphne")

    assert supervisor_restarts(redis_client) == {"daphne": 1, "vllm-worker": 2}


def test_the_ops_panel_shows_the_restarts(ops_client, redis_client, settings):
    settings.INFERENCE_WORKERS = ["http://127.0.0.1:9"]  # nobody answers: shown as down
    supervisor_restart_record(redis_url=settings.REDIS_URL, name="vllm-worker")

    page = ops_client.get("/ops/panel/").content.decode()

    assert "Restarted by <code>make run</code>: vllm-worker 1." in page
