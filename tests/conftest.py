"""Shared fixtures: real PostgreSQL (embedded, started by settings) and real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client

from console import localstack
from console.permissions import DESIGNERS, OPS
from tests.factories import UserFactory


@pytest.fixture(scope="session", autouse=True)
def _redis_running() -> None:
    """The suite talks to a real Redis; start a local one if none answers."""
    localstack.redis_ensure(settings.REDIS_URL)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The test Redis database, emptied before and after each test that asks for it."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _staff_client(group_name: str) -> Client:
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
