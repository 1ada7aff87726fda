"""Local services that make run and the suite start: real redis-server and the embedded PostgreSQL."""

from __future__ import annotations

import pytest
import redis
from django.db import connection

from console import localstack
from console.localstack import free_port


def test_redis_ensure_starts_a_local_server_with_aof_when_nothing_answers(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert not localstack.redis_ping(url)

    state = localstack.redis_ensure(url, data_dir=tmp_path)

    try:
        client = redis.Redis.from_url(url)
        assert state == "started"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir")["dir"] == str(tmp_path)
        assert localstack.redis_ensure(url, data_dir=tmp_path) == "running"
    finally:
        localstack.redis_shutdown(url)
    assert not localstack.redis_ping(url)


def test_redis_ensure_says_how_to_install_redis_when_the_binary_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(localstack.shutil, "which", lambda _name: None)

    with pytest.raises(localstack.LocalServiceError, match="apt-get install -y redis-server"):
        localstack.redis_ensure(f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path)


def test_redis_ensure_does_not_start_servers_for_remote_urls(tmp_path, monkeypatch):
    # No packet leaves the machine: the ping is what a remote server would fail.
    monkeypatch.setattr(localstack, "redis_ping", lambda _url: False)

    with pytest.raises(localstack.LocalServiceError, match="fix REDIS_URL"):
        localstack.redis_ensure("redis://redis.studio.example:6379/0", data_dir=tmp_path)


@pytest.mark.django_db
def test_database_has_pgvector_with_hnsw_cosine_search():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE probe (id int, embedding vector(3))")
        cursor.execute("INSERT INTO probe VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')")
        cursor.execute("CREATE INDEX ON probe USING hnsw (embedding vector_cosine_ops)")
        cursor.execute("SELECT id FROM probe ORDER BY embedding <=> '[1,0,0]' LIMIT 2")
        assert [row[0] for row in cursor.fetchall()] == [1, 3]
