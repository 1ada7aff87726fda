"""Reads for console pages (writes live in console/services)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from console.caches import ProcessCache
from console.models import NPC, IngestJob
from console.models.npcs import NPCStatus
from console.supervisor import supervisor_restarts
from inference.observability import (
    COST_WINDOW_HOURS,
    archive_lag,
    cost_top,
    recent_turns,
    region_tiers,
    turn_figures,
)
from inference.workers import worker_health
from training.models import EvalRun, ProvisionRun, TrainingJob


def playtest_npcs() -> QuerySet[NPC]:
    """NPCs a designer can talk to on the playtest page: every active one, with what the picker shows."""
    return (
        NPC.objects.filter(status=NPCStatus.ACTIVE)
        .select_related("archetype", "region")
        .only("slug", "name", "archetype__name", "region__name")
        .order_by("name")
    )


# --- The ops dashboard (console.views.ops_dashboard) ------------------------------------------

# Worker answers are cached this long: a dashboard polled every 2 s by several people must not
# query each worker that often.
WORKER_FIGURES_TTL_S = 5.0
_worker_figures: ProcessCache[str, list[dict[str, Any]]] = ProcessCache(
    "console.selectors.worker_figures", ttl_s=WORKER_FIGURES_TTL_S, maxsize=1
)


def _workers_figures() -> list[dict[str, Any]]:
    """Each configured worker's health and the adapters it holds (cached WORKER_FIGURES_TTL_S)."""
    return _worker_figures.get_or_set("all", _workers_figures_read)


def _workers_figures_read() -> list[dict[str, Any]]:
    from django.conf import settings

    figures = []
    for url in settings.INFERENCE_WORKERS:
        health = worker_health(url, timeout_s=1.0)
        adapters = list(health.adapters) if health.healthy else []
        figures.append({"url": url, "healthy": health.healthy, "detail": health.detail, "adapters": adapters})
    return figures


def _job_states() -> dict[str, dict[str, int]]:
    """Per kind of long job, how many rows are in each status."""
    from django.db.models import Count

    states: dict[str, dict[str, int]] = {}
    for label, model in (("ingest", IngestJob), ("training", TrainingJob), ("eval", EvalRun),
                         ("provision", ProvisionRun)):  # fmt: skip
        rows = model.objects.values("status").annotate(count=Count("id")).order_by("status")
        states[label] = {row["status"]: row["count"] for row in rows}
    return states


def ops_snapshot() -> dict[str, Any]:
    """Everything the ops dashboard shows, read now."""
    import time

    import redis
    from django.conf import settings

    queues = sorted({"io", "celery", *(route["queue"] for route in settings.CELERY_TASK_ROUTES.values())})
    # Closed after each read, as the warm memory pages do: the panel polls every 2 s.
    with (
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2) as client,
        redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2) as broker,
    ):
        return {
            "regions": region_tiers(client),
            "turns": turn_figures(recent_turns(client), now=time.time()),
            "cost": cost_top(client),  # the top spenders per kind, not every name ever seen
            "cost_hours": COST_WINDOW_HOURS,
            "archive": archive_lag(client, settings.MEMORY_STREAM),
            "queues": {queue: int(broker.llen(queue)) for queue in queues},
            "jobs": _job_states(),
            "workers": _workers_figures(),
            # Children `make run` restarted (console.supervisor): a crash loop shows here.
            "restarts": supervisor_restarts(client),
        }
