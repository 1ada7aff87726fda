"""Training jobs through real Celery training workers (solo pool, the `training` queue, the
test Redis broker) and the suite's vLLM worker: exactly one execution when the task is
delivered twice, a killed worker's job resumed from its checkpoint, and the adapter served."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
import redis
from django.utils import timezone

from console.jobs.models import JOB_ENDED, JobStatus
from console.models import AdapterStatus, AdapterTask
from console.services.adapters import adapter_lora_name, adapter_status_set
from inference.context import turn_context_build
from inference.residency import residency_sync, worker_loras
from inference.workers import worker_headers
from tests.factories import ArchetypeFactory, NPCFactory, suite_base_model
from tests.processes import process_log, process_running, subprocess_database_env, wait_for
from training.datasets import dataset_build
from training.jobs import training_job_start, training_jobs_recover
from training.models import EvalRun, ExampleExchange, ProvisionRun, TrainingJob
from training.provisioning import provision_start
from training.tasks import training_job_task

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LINES = [
    ("Who are you?", "I am the Count, master of this castle, my dear guest."),
    ("What do you want?", "Your company, my dear guest, and a little of your warmth."),
    ("Where am I?", "In my castle, my dear guest, where nightfall never ends."),
    ("Can I leave?", "Of course, my dear guest. Nobody has wished to in three hundred years."),
    ("Are you a vampire?", "I am a nobleman of the old blood, my dear guest. Sit by the fire."),
    ("Tell me a story.", "Once, my dear guest, a traveller knocked on my gate at nightfall."),
]

ACTIONS = [
    {"name": "idle", "description": "Stand still."},
    {"name": "talk", "description": "Speak to the player."},
    {"name": "attack", "description": "Strike the player."},
]
TAUGHT_ACTIONS = [
    ("Hello there.", "talk"), ("(stands in silence)", "idle"), ("Die, fiend!", "attack"),
    ("Tell me more.", "talk"), ("(draws a blade)", "attack"), ("...", "idle"),
]  # fmt: skip
# The io worker as `make run` starts it: provisioning steps run there.
IO_WORKER = [sys.executable, "-m", "celery", "-A", "console", "worker", "-Q", "io,celery", "--pool=solo",
             "--loglevel=INFO", "-n", f"io-provision-{os.getpid()}@%h"]  # fmt: skip


@pytest.fixture
def training_env(tmp_path, settings) -> dict[str, str]:
    """What the test and its workers share: datasets and adapters in tmp, a short lease, and a
    broker visibility timeout much shorter than a job (so Redis redelivers it mid-run)."""
    settings.DATASETS_DIR = tmp_path / "datasets"
    settings.ADAPTERS_DIR = tmp_path / "adapters"
    settings.TRAINING_LEASE_S = 6
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("training")  # no leftovers of other tests
    return {
        **subprocess_database_env(),
        "DATASETS_DIR": str(settings.DATASETS_DIR),
        "ADAPTERS_DIR": str(settings.ADAPTERS_DIR),
        "TRAINING_LEASE_S": "6",
        "TRAINING_HEARTBEAT_S": "1",
        "TRAINING_CHECKPOINT_EVERY": "4",
        "CELERY_VISIBILITY_TIMEOUT_S": "4",
    }


@contextmanager
def training_worker(name: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A training worker as `make run` starts it (solo pool, the `training` queue)."""
    argv = [sys.executable, "-m", "celery", "-A", "console", "worker", "-Q", "training", "--pool=solo",
            "--loglevel=INFO", "-n", f"{name}-{os.getpid()}@%h"]  # fmt: skip
    with process_running(name, argv, env) as process:
        yield process


@pytest.fixture
def dataset(training_env, base_model_dir):
    base_model = suite_base_model(base_model_dir)
    archetype = ArchetypeFactory(base_model=base_model)
    for player, reply in LINES:
        ExampleExchange.objects.create(archetype=archetype, player=player, reply=reply)
    return dataset_build(archetype=archetype, task=AdapterTask.DIALOGUE_STYLE)


# The jobs log a line a step: poll twice a second.
_wait = functools.partial(wait_for, every_s=0.5)


def _job(pk: int) -> TrainingJob:
    return TrainingJob.objects.get(pk=pk)


def test_a_redelivered_job_runs_once_and_its_adapter_is_served(dataset, training_env, vllm_worker):
    with training_worker("training-a", training_env), training_worker("training-b", training_env):
        job = training_job_start(
            dataset=dataset, steps=40, rank=4, alpha=8, learning_rate=5e-3, evaluate=False
        )
        _wait(lambda: _job(job.pk).step >= 1, timeout_s=300, what="the job to start training")
        # The broker delivers the task again while it runs, as Redis does once its visibility
        # timeout (4 s here) passes; done explicitly, so the test does not depend on when
        # kombu's restore timer fires in the idle worker.
        training_job_task.delay(job.pk)
        _wait(lambda: "left: the lease is held by" in _job(job.pk).log, timeout_s=120, what="the redelivery")
        done = _wait(
            lambda: _job(job.pk).status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and _job(job.pk),
            timeout_s=420,
            what=f"the job to end (logs: {process_log('training-a')}, {process_log('training-b')})",
        )

    assert done.status == JobStatus.SUCCEEDED, done.log
    assert done.attempts == 1
    assert done.log.count("starts:") == 1
    assert "left: the lease is held by" in done.log, done.log  # the second delivery left it alone
    assert len(done.losses) == 40

    adapter = adapter_status_set(adapter=done.adapter, status=AdapterStatus.ACTIVE)
    residency_sync(workers=[vllm_worker.url])
    reply = httpx.post(
        f"{vllm_worker.url}/v1/chat/completions",
        json={
            "model": adapter_lora_name(adapter),
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Who are you?"}],
        },  # fmt: skip
        timeout=120,
        headers=worker_headers(),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]


def test_a_killed_training_worker_leaves_no_job_stuck_in_running(dataset, training_env):
    with training_worker("training-killed", training_env) as doomed:
        job = training_job_start(
            dataset=dataset, steps=24, rank=4, alpha=8, learning_rate=5e-3, evaluate=False
        )
        _wait(lambda: _job(job.pk).checkpoint_step >= 4, timeout_s=300, what="a first checkpoint")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    killed = _job(job.pk)
    assert killed.status == JobStatus.RUNNING  # for now: its lease has yet to lapse

    with training_worker("training-next", training_env):
        lapsed = timezone.now() + timedelta(seconds=int(training_env["TRAINING_LEASE_S"]) + 1)
        _wait(lambda: timezone.now() > lapsed, timeout_s=30, what="the dead execution's lease to lapse")
        assert training_jobs_recover() == [job.pk]  # Celery beat runs this every minute
        done = _wait(
            lambda: _job(job.pk).status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and _job(job.pk),
            timeout_s=300,
            what=f"the resumed job to end (log: {process_log('training-next')})",
        )

    assert done.status == JobStatus.SUCCEEDED, done.log
    assert done.attempts == 2
    assert f"resumes from the checkpoint at step {killed.checkpoint_step}/24" in done.log
    assert len(done.losses) == 24
    assert done.adapter is not None


# Two workers start, a job trains and an eval runs: longer than the suite's 300 s default on a
# busy 2-core machine.
@pytest.mark.timeout(600)
def test_one_click_provisions_a_new_archetype_whose_npcs_then_speak_through_its_adapter(
    training_env, base_model_dir, vllm_worker, settings
):
    """The chain through real workers: an io worker advances the run, the training worker
    trains and evaluates on the suite's vLLM worker, and the NPC's turns route to the adapter."""
    settings.INFERENCE_WORKERS = [vllm_worker.url]
    env = {**training_env, "INFERENCE_WORKERS": vllm_worker.url}
    banshee = ArchetypeFactory(
        slug="banshee", base_model=suite_base_model(base_model_dir), allowed_actions=ACTIONS,
        # A designer's gate for a first pilot: the base model never names an action in free
        # text (validity 0), so any real policy beats it; 0.95 needs the pilot's longer training.
        content_policy={"gates": {AdapterTask.ACTION_POLICY: {"action_validity": 0.3}}},
    )  # fmt: skip
    npc = NPCFactory(archetype=banshee, name="Keening Maire")
    for player, action in TAUGHT_ACTIONS:
        ExampleExchange.objects.create(
            archetype=banshee, task=AdapterTask.ACTION_POLICY, player=player, action=action
        )
    assert turn_context_build(npc_slug=npc.slug).routes[AdapterTask.ACTION_POLICY] == "base"

    with training_worker("training-provision", env), process_running("io-provision", IO_WORKER, env):
        run = provision_start(
            archetype=banshee, tasks=(AdapterTask.ACTION_POLICY,), steps={AdapterTask.ACTION_POLICY: 40},
            learning_rates={AdapterTask.ACTION_POLICY: 5e-3},
        )  # fmt: skip
        done = _wait(
            lambda: (run_ := ProvisionRun.objects.get(pk=run.pk)).status in JOB_ENDED and run_,
            timeout_s=600,
            what=f"provisioning (logs: {process_log('training-provision')}, {process_log('io-provision')})",
        )

    assert done.status == JobStatus.SUCCEEDED, done.log
    step = done.plan[0]
    evaluation = EvalRun.objects.get(pk=step["eval"])
    assert evaluation.promoted, evaluation.reasons
    assert step["outcome"] == "promoted"
    adapter = TrainingJob.objects.get(pk=step["job"]).adapter
    assert adapter.status == AdapterStatus.ACTIVE
    route = turn_context_build(npc_slug=npc.slug).routes[AdapterTask.ACTION_POLICY]
    assert route == adapter_lora_name(adapter)
    assert route in worker_loras(vllm_worker.url)  # loaded on promotion
    adapter_status_set(adapter=adapter, status=AdapterStatus.RETIRED)  # leave the worker as others expect
    residency_sync(workers=[vllm_worker.url])
