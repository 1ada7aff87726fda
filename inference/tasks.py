"""Celery tasks of the inference package: keeping workers' adapters in line with the registry."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction

from console.redis_clients import redis_sync
from inference.residency import residency_sync

logger = logging.getLogger(__name__)

# One sync at a time across every Celery worker; a sync reads the whole registry, so a second
# request made while one runs is covered by re-running once it ends (see below).
_LOCK_NAME = "revenant:lock:residency_sync"
_LOCK_TIMEOUT_S = 600


@shared_task(bind=True, acks_late=True, max_retries=3, default_retry_delay=5)
def residency_sync_task(self: Any) -> dict[str, Any]:
    """Load active adapters into their workers and unload retired ones (idempotent)."""
    client = redis_sync()
    lock = client.lock(_LOCK_NAME, timeout=_LOCK_TIMEOUT_S, blocking=False)
    if not lock.acquire():
        # Another sync is running; it may have read the registry before this change, so retry.
        raise self.retry()
    try:
        report = residency_sync(workers=settings.INFERENCE_WORKERS)
    finally:
        lock.release()
    for message in report.refused:
        logger.error("residency refused: %s", message)
    logger.info(
        "residency sync: %d loaded, %d unloaded, %d refused, unhealthy workers %s",
        len(report.loaded),
        len(report.unloaded),
        len(report.refused),
        report.unhealthy or "none",
    )
    return {
        "loaded": [list(pair) for pair in report.loaded],
        "unloaded": [list(pair) for pair in report.unloaded],
        "refused": report.refused,
        "unhealthy": report.unhealthy,
    }


def residency_sync_enqueue() -> None:
    """Queue a sync once the current transaction commits (the worker must see the new status)."""
    transaction.on_commit(residency_sync_task.delay)
