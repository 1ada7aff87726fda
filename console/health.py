"""`/health/`: one JSON answer for load balancers and ops.

Built on django-health-check's checks, with the checks named explicitly: the library's
defaults include a DNS lookup, which leaves the machine.
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from health_check.base import HealthCheck
from health_check.checks import Database
from health_check.contrib.celery import Ping as CeleryPing
from health_check.contrib.redis import Redis
from health_check.exceptions import ServiceUnavailable
from health_check.views import HealthCheckView

from console.redis_clients import redis_async
from inference.workers import worker_health


class _ReturnsConnection:
    """Sync checks run in executor threads, where no request_finished signal closes the
    thread's connection: give it back to the pool, or health probes drain the pool."""

    def run(self) -> None:
        try:
            self.check()
        finally:
            connection.close()

    def check(self) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class DatabaseReachable(_ReturnsConnection, Database):
    """django-health-check's database probe (SELECT 1)."""

    def check(self) -> None:
        Database.run(self)


@dataclasses.dataclass
class PgVector(_ReturnsConnection, HealthCheck):
    """The `vector` extension is installed (lore search and memory need it)."""

    def check(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            if cursor.fetchone() is None:
                raise ServiceUnavailable("the vector extension is missing: run `python manage.py migrate`")


@dataclasses.dataclass
class Migrations(_ReturnsConnection, HealthCheck):
    """Every migration is applied (a half-upgraded schema fails loudly instead of oddly)."""

    def check(self) -> None:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if pending:
            raise ServiceUnavailable(
                f"{len(pending)} migration(s) not applied: run `python manage.py migrate`"
            )


@dataclasses.dataclass
class InferenceWorkers(HealthCheck):
    """At least one vLLM worker answers; the message lists each worker's state."""

    def run(self) -> None:

        states = [worker_health(url) for url in settings.INFERENCE_WORKERS]
        if not any(state.healthy for state in states):
            raise ServiceUnavailable("; ".join(f"{state.url}: {state.detail}" for state in states))


def _checks() -> dict[str, tuple[HealthCheck, bool]]:
    """name -> (check, required). /health/ is 200 only when every required check passes."""
    return {
        "database": (DatabaseReachable(), True),
        "pgvector": (PgVector(), True),
        "migrations": (Migrations(), True),
        "redis": (
            Redis(client_factory=lambda: redis_async(socket_timeout=2)),
            True,
        ),
        "workers": (InferenceWorkers(), settings.HEALTH_REQUIRE_WORKERS),
        "celery": (
            # Every worker that answers within the timeout counts: with limit=1 the first reply
            # alone was checked for the `io` queue, and when the training worker (queue
            # `training`) answered first, health said "no worker for io" (seen in make test).
            CeleryPing(timeout=datetime.timedelta(seconds=1)),
            settings.HEALTH_REQUIRE_CELERY,
        ),
    }


# Who may read each check's details: ops (the dashboard's permission), or a monitor holding the
# METRICS_TOKEN. Errors name worker URLs, hosts and exception text: useful to an attacker too.
HEALTH_DETAILS_PERMISSION = "console.watch_region"


async def health_details_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(sent.encode(), token.encode()):
            return True
    user = await request.auser()
    return bool(user.is_active and user.is_staff and await user.ahas_perm(HEALTH_DETAILS_PERMISSION))


class HealthView(HealthCheckView):
    """Always JSON: {"status": "ok"|"fail"}, and for ops (or the metrics token) also
    "checks": {name: {"status", "required", "ms", "error"?}}."""

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        import asyncio

        checks = _checks()
        results = await asyncio.gather(*(check.get_result() for check, _ in checks.values()))
        body: dict[str, Any] = {}
        healthy = True
        for (name, (_, required)), result in zip(checks.items(), results, strict=True):
            entry: dict[str, Any] = {
                "status": "fail" if result.error else "ok",
                "required": required,
                "ms": round(result.time_taken * 1000, 1),
            }
            if result.error:
                entry["error"] = str(result.error)
                healthy = healthy and not required
            body[name] = entry
        answer: dict[str, Any] = {"status": "ok" if healthy else "fail"}
        if await health_details_allowed(request):
            answer["checks"] = body
        return JsonResponse(answer, status=200 if healthy else 503)
