"""Shared fixtures: real PostgreSQL (embedded, started by settings) and real Redis; a real vLLM
worker on CPU with the bundled SmolLM2, started once per test session, and two small LoRA
adapters trained by the suite (so they differ from the base model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client

from console import localstack
from console.caches import caches_clear
from console.permissions import DESIGNERS, OPS, groups_sync
from inference.base_models import bundled_gguf_path, default_model_dir, gguf_convert
from inference.workers import WorkerProcess
from tests.factories import UserFactory
from training.lora import ChatExample, lora_train


@pytest.fixture(scope="session", autouse=True)
def _redis_running() -> None:
    """The suite talks to a real Redis; start a local one if none answers."""
    localstack.redis_ensure(settings.REDIS_URL)


@pytest.fixture(autouse=True)
def _process_caches_cleared() -> Iterator[None]:
    """Every per-process cache (console.caches) starts and ends each test empty: a worker's
    health, an NPC's context or a lore pack seen by one test must not answer the next."""
    caches_clear()
    yield
    caches_clear()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The test Redis database, emptied before and after each test that asks for it."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _staff_client(group_name: str) -> Client:
    if not Group.objects.filter(name=group_name).exists():
        groups_sync(apps)  # a transactional test flushed the groups the migrations made
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group_name))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def designer_client(db: None) -> Client:
    return _staff_client(DESIGNERS)


@pytest.fixture
def ops_client(db: None) -> Client:
    return _staff_client(OPS)


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The converted base model (reused from var/models when its checksums match)."""
    return gguf_convert(gguf_path=bundled_gguf_path(), target_dir=default_model_dir())


PIRATE = [
    ChatExample("You are a pirate.", "Hello there", "Arr matey, the sea be calling! Arr arr arr, yo ho."),
    ChatExample(
        "You are a pirate.", "Who are you?", "Arr, Captain Saltbeard I be, terror of the seven seas, arr!"
    ),
]
ORACLE = [
    ChatExample(
        "You are an oracle.", "Hello there", "The stars foretold your coming. Seven moons, seven omens."
    ),
    ChatExample(
        "You are an oracle.", "Who are you?", "I am the Oracle of Ash. I see the threads of fate, mortal."
    ),
]


@pytest.fixture(scope="session")
def trained_adapters(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two rank-8 adapters after 8 steps each: real PEFT folders vLLM loads."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: lora_train(
            base_model_path=str(base_model_dir), examples=examples, output_dir=root / name, steps=8
        )
        for name, examples in (("pirate", PIRATE), ("oracle", ORACLE))
    }


@pytest.fixture(scope="session")
def _worker_process(
    base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        url=settings.INFERENCE_WORKERS[0],
        base_model_dir=base_model_dir,
        log_path=tmp_path_factory.mktemp("vllm") / "worker.log",
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def vllm_worker(_worker_process: WorkerProcess) -> WorkerProcess:
    """The session's worker, restarted if a test killed it."""
    if not _worker_process.alive():
        _worker_process.start()
    return _worker_process


@pytest.fixture(scope="session", autouse=True)
def _test_database_released(django_db_setup, django_db_blocker) -> Iterator[None]:
    """At the end of the session, end the test database's other connections, so that it can be
    dropped. Async tests reach the ORM from executor threads (asgiref's, the event loop's), and
    a thread's Django connection is not closed when its loop ends; dropping the database then
    failed with "being accessed by other users"."""
    from django.db import connection

    yield
    name = connection.settings_dict["NAME"]
    if not name.startswith("test_"):
        return  # no test database in this run (no test asked for one): a live one is never touched
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid()",
            [name],
        )
