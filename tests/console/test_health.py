from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


def _health(settings):
    """/health/ as a monitor sees it: the checks' details come with the token (or for ops)."""
    settings.METRICS_TOKEN = "monitoring-token"
    return Client().get("/health/", HTTP_AUTHORIZATION="Bearer monitoring-token")


def test_health_is_ok_with_real_postgres_and_redis(settings):
    response = _health(settings)

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    for name in ("database", "pgvector", "migrations", "redis"):
        assert body["checks"][name]["status"] == "ok"
        assert body["checks"][name]["required"] is True


def test_health_fails_with_503_when_redis_does_not_answer(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    response = _health(settings)

    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["checks"]["redis"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"


def test_optional_celery_check_does_not_fail_health(settings):
    settings.HEALTH_REQUIRE_CELERY = False

    body = _health(settings).json()

    assert body["checks"]["celery"]["required"] is False
    assert body["status"] == "ok"


def test_required_celery_check_fails_health_without_a_worker(settings):
    settings.HEALTH_REQUIRE_CELERY = True

    response = _health(settings)

    assert response.status_code == 503
    assert response.json()["checks"]["celery"]["status"] == "fail"


def test_metrics_serves_prometheus_text():
    client = Client()
    client.get("/health/")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert b"django_http_requests_total_by_method_total" in response.content


def test_metrics_token_is_enforced_when_set(settings):
    settings.METRICS_TOKEN = "s3cret-token"
    client = Client()

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
