"""Issue 17, item 12 (the console's smaller holes): adapter fields designers may not edit, turn
replay behind the trace permission, game key secrets never in a cookie, /metrics and /health/
closed to strangers in production, the admin login throttled, ingests that end on a database
error, Redis clients with timeouts."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.models import Adapter, AdapterStatus, GameClientKey
from console.services.adapters import adapter_folder_digest
from console.services.keys import game_key_authenticate
from memory.events import turn_event_id
from memory.models import MemoryEvent, MemoryEventKind
from tests.factories import AdapterFactory, NPCFactory, UserFactory

pytestmark = pytest.mark.django_db


def _artifact(folder: Path, payload: bytes) -> tuple[str, str]:
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    (folder / "adapter_model.safetensors").write_bytes(payload)
    sha256, _ = adapter_folder_digest(folder)
    return str(folder), sha256


def _adapter_form(adapter: Adapter, **changes: str) -> dict[str, str]:
    data = {
        "scope": adapter.scope, "archetype": str(adapter.archetype_id), "subfaction": "", "npc": "",
        "task": adapter.task, "version": str(adapter.version), "rank": str(adapter.rank),
        "alpha": str(adapter.alpha), "artifact_path": adapter.artifact_path, "sha256": adapter.sha256,
        "size_bytes": str(adapter.size_bytes), "base_model": str(adapter.base_model_id),
        "status": adapter.status, "eval_metrics": "{}", "composition": "{}",
    }  # fmt: skip
    data.update(changes)
    return data


def test_a_designer_cannot_point_an_adapter_at_another_artifact_nor_activate_it_by_editing(
    designer_client, tmp_path
):
    # Given a candidate that was measured on its own artifact, and another artifact on disk
    path, sha256 = _artifact(tmp_path / "judged", b"judged")
    adapter = AdapterFactory(artifact_path=path, sha256=sha256, rank=8, status=AdapterStatus.CANDIDATE)
    other_path, other_sha256 = _artifact(tmp_path / "unjudged", b"unjudged")
    url = reverse("admin:console_adapter_change", args=[adapter.pk])

    # When a designer saves the change form with the other artifact and status active
    designer_client.post(
        url, _adapter_form(adapter, artifact_path=other_path, sha256=other_sha256, status="active")
    )

    # Then nothing of it was saved: artifact and status change only through training and the actions
    adapter.refresh_from_db()
    assert (adapter.artifact_path, adapter.sha256, adapter.status) == (path, sha256, "candidate")
    page = designer_client.get(url).content.decode()
    assert 'name="artifact_path"' not in page
    assert 'name="status"' not in page


def test_reverting_an_adapter_to_an_old_version_does_not_restore_its_status_or_artifact(
    designer_client, tmp_path
):
    # Given an adapter that was active on an old artifact, then retired and re-imported
    old_path, old_sha256 = _artifact(tmp_path / "old", b"old")
    adapter = AdapterFactory(artifact_path=old_path, sha256=old_sha256, rank=8, status=AdapterStatus.ACTIVE)
    new_path, new_sha256 = _artifact(tmp_path / "new", b"new")
    adapter.artifact_path, adapter.sha256, adapter.status = new_path, new_sha256, AdapterStatus.RETIRED
    adapter.save()
    active_version = adapter.history.order_by("history_date").first()

    # When a designer posts the history page's "Revert" of the active version
    designer_client.post(
        reverse("admin:console_adapter_simple_history", args=[adapter.pk, active_version.history_id]),
        _adapter_form(active_version.instance),  # the revert form comes filled with the old values
    )

    # Then the adapter is still retired, on its new artifact
    adapter.refresh_from_db()
    assert (adapter.artifact_path, adapter.status) == (new_path, "retired")


def _archived_turn(turn_id: str) -> None:
    MemoryEvent.objects.create(
        event_id=turn_event_id(turn_id), kind=MemoryEventKind.TURN, npc_slug="bloated-tom",
        player_id="p1", occurred_at=timezone.now(),
        payload={"player": "my secret plan", "npc": "Hnnngh...",
                 "trace": {"messages": [{"role": "user", "content": "my secret plan"}],
                           "sampling": {"max_tokens": 8}}},
    )  # fmt: skip


def test_replaying_a_turn_needs_the_trace_permission_too(settings):
    # Given a staff user who may playtest NPCs but not read archived turns
    settings.INFERENCE_WORKERS = ["http://127.0.0.1:9"]
    NPCFactory(slug="bloated-tom")
    _archived_turn("t_secret")
    user = UserFactory(is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="playtest_npc"))
    client = Client()
    client.force_login(user)

    # When they ask for the turn's replay
    response = client.post("/ops/turns/t_secret/replay/")

    # Then they are refused, as on the trace page
    assert client.get("/ops/turns/t_secret/").status_code == 403
    assert response.status_code == 403


def test_a_new_game_key_secret_is_shown_on_the_page_and_never_stored_in_a_cookie_or_session(ops_client):
    # When ops adds a game key
    response = ops_client.post(
        reverse("admin:console_gameclientkey_add"),
        {"name": "godot-client", "scopes": ["play"], "active": "on"},
    )

    # Then the answer is a page with the secret, kept by no cache, cookie or session
    key = GameClientKey.objects.get(name="godot-client")
    page = response.content.decode()
    assert response.status_code == 200
    secret = page.split('id="game-key-secret">', 1)[1].split("<", 1)[0]
    assert game_key_authenticate(secret=secret) == key
    assert "no-store" in response["Cache-Control"]
    assert all(secret not in morsel.value for morsel in ops_client.cookies.values())
    session = ops_client.session
    assert all(secret not in str(value) for value in session.values())
    # and it is not shown again
    for name in ("admin:console_gameclientkey_changelist", "admin:index"):
        assert secret not in ops_client.get(reverse(name)).content.decode()
    assert (
        secret
        not in ops_client.get(reverse("admin:console_gameclientkey_change", args=[key.pk])).content.decode()
    )


def _production_settings(monkeypatch, **env: str):
    monkeypatch.setenv("SECRET_KEY", "x" * 60)
    monkeypatch.setenv("ALLOWED_HOSTS", "revenant.example.org")
    monkeypatch.setenv("INFERENCE_API_KEY", "k" * 40)
    monkeypatch.setenv("DATABASE_URL", "postgres://revenant:unused@db.invalid:5432/revenant")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("console.settings.production", None)
    try:
        return importlib.import_module("console.settings.production")
    finally:
        sys.modules.pop("console.settings.production", None)


def test_production_settings_refuse_to_start_without_a_database_url(monkeypatch):
    # Given a production environment complete but for DATABASE_URL
    monkeypatch.setenv("METRICS_TOKEN", "m" * 40)

    # When the settings are imported without it, they refuse and say what to set
    with pytest.raises(ImproperlyConfigured, match=r"DATABASE_URL must be set .*postgres://"):
        _production_settings(monkeypatch, DATABASE_URL="")

    # And with it, they use that server (no embedded one is started)
    url = "postgres://revenant:secret@db.example.org:5432/revenant"
    database = _production_settings(monkeypatch, DATABASE_URL=url).DATABASES["default"]
    assert (database["HOST"], database["NAME"], database["OPTIONS"]["pool"]["max_size"]) == (
        "db.example.org",
        "revenant",
        10,
    )


def test_production_settings_refuse_to_start_without_a_metrics_token(monkeypatch):
    monkeypatch.delenv("METRICS_TOKEN", raising=False)

    with pytest.raises(ImproperlyConfigured, match="METRICS_TOKEN"):
        _production_settings(monkeypatch)

    assert _production_settings(monkeypatch, METRICS_TOKEN="m" * 40).METRICS_TOKEN == "m" * 40


def test_health_tells_strangers_only_ok_or_fail_and_ops_everything(settings, ops_client):
    # Given a worker that does not answer (its URL and the error would tell an attacker a lot)
    settings.INFERENCE_WORKERS = ["http://10.1.2.3:9"]
    settings.HEALTH_REQUIRE_WORKERS = True
    settings.METRICS_TOKEN = "monitoring-token"

    # When a stranger, ops and the monitoring token ask /health/
    stranger = Client().get("/health/")
    staff = ops_client.get("/health/")
    monitoring = Client().get("/health/", HTTP_AUTHORIZATION="Bearer monitoring-token")
    designer = Client()
    designer.force_login(UserFactory(is_staff=True))

    # Then the stranger (and staff without the ops permission) learn the status alone
    assert stranger.status_code == 503
    assert stranger.json() == {"status": "fail"}
    assert designer.get("/health/").json() == {"status": "fail"}
    assert "10.1.2.3" not in stranger.content.decode()
    for response in (staff, monitoring):
        assert response.status_code == 503
        assert "10.1.2.3" in response.json()["checks"]["workers"]["error"]


@pytest.mark.django_db(transaction=True)  # the runner replaces a broken connection before it writes
def test_an_ingest_hit_by_a_database_error_ends_failed_not_running_for_ever():
    from console.jobs.models import JobStatus
    from console.lore.files import LoreFile
    from console.lore.ingest import ingest_job_run
    from console.models import IngestJob, LoreDocument
    from tests.factories import WorldFactory

    # Given a job whose second document Postgres refuses (a title over its column's length)
    job = IngestJob.objects.create(world=WorldFactory(), source="upload:two.json")
    files = [
        LoreFile(slug="fine", title="Fine", source="two.json#0", text="The moor is quiet at night."),
        LoreFile(slug="refused", title="T" * 300, source="two.json#1", text="Too long a title."),
    ]

    # When it runs
    ingest_job_run(job, files=files)

    # Then it ended failed with Postgres's reason, and the first document stays written
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "too long" in job.error
    assert job.finished_at is not None
    assert LoreDocument.objects.filter(slug="fine").exists()


def test_the_admin_login_is_locked_for_a_username_after_repeated_failures(settings):
    # Given a staff account and someone guessing its password from one address
    settings.AXES_FAILURE_LIMIT = 5
    UserFactory(username="ops-alice", is_staff=True)  # password: correct-horse-battery
    guesser, colleague = Client(), Client()
    login = reverse("admin:login")
    for guess in range(5):
        guesser.post(login, {"username": "ops-alice", "password": f"guess-{guess}"})

    # When the right password comes next from that address
    locked = guesser.post(login, {"username": "ops-alice", "password": "correct-horse-battery"})

    # Then it is refused (429), and the lock holds only that username at that address
    assert locked.status_code == 429
    assert "_auth_user_id" not in guesser.session
    UserFactory(username="ops-bob", is_staff=True)
    bob = colleague.post(login, {"username": "ops-bob", "password": "correct-horse-battery"})
    assert bob.status_code == 302


@pytest.fixture
def silent_redis(settings):
    """A TCP port that accepts connections (the kernel's backlog) and never answers: a Redis that
    hangs (a failover, a half-open connection). Our clients must give up within their timeout."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    settings.REDIS_URL = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    settings.REDIS_SOCKET_TIMEOUT_S = 0.5
    yield settings.REDIS_URL
    listener.close()


def _gives_up_within(seconds: float, call) -> bool:
    import time

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    started = time.monotonic()
    with pytest.raises((RedisTimeoutError, RedisConnectionError)):
        call()
    return time.monotonic() - started < seconds


def test_redis_clients_of_the_bridge_tasks_and_pages_time_out_and_check_idle_connections(silent_redis):
    import asyncio

    from bridge.sessions import SessionRegistry
    from memory.views import _redis as warm_pages_redis

    bridge = SessionRegistry().redis

    # A hung Redis fails a command within the configured timeout (not the library's 5 s default)
    assert _gives_up_within(2.0, lambda: asyncio.run(bridge.ping()))
    assert _gives_up_within(2.0, warm_pages_redis().ping)
    # and the bridge's pooled connections are PINGed after an idle spell before they are reused
    assert bridge.connection_pool.connection_kwargs["health_check_interval"] == 30
