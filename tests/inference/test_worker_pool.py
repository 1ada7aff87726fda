"""Which workers the turn path considers healthy, and failover when one fails a turn."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from console.localstack import free_port
from inference.routing import worker_for_archetype
from inference.workers import worker_mark_down, workers_healthy_cached


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def live_url() -> Iterator[str]:
    """A process-boundary double of a worker's /health (the real worker is in the e2e tests)."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_dead_workers_are_left_out_and_a_failed_worker_is_routed_around_until_its_next_probe(
    live_url, settings
):
    settings.WORKER_HEALTH_TTL_S = 0.5
    dead = f"http://127.0.0.1:{free_port()}"
    other_live = live_url.replace("127.0.0.1", "localhost")  # a second name for the same live server

    assert asyncio.run(workers_healthy_cached([dead, live_url, other_live])) == [live_url, other_live]

    owner = worker_for_archetype("vampire", [live_url, other_live])
    worker_mark_down(owner)
    survivors = asyncio.run(workers_healthy_cached([dead, live_url, other_live]))
    assert owner not in survivors
    assert worker_for_archetype("vampire", survivors) != owner

    async def after_the_ttl():
        await asyncio.sleep(0.6)
        stale = await workers_healthy_cached([dead, live_url, other_live])  # from the table; probes start
        await asyncio.sleep(0.3)
        return stale, await workers_healthy_cached([dead, live_url, other_live])

    stale, fresh = asyncio.run(after_the_ttl())
    assert owner not in stale
    assert fresh == [live_url, other_live]


class _SlowHealth(_Health):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(0.4)  # a worker whose API server is slow to answer while it decodes
        super().do_GET()


def test_a_turn_never_waits_on_a_probe_of_a_worker_already_seen(settings):
    settings.WORKER_HEALTH_TTL_S = 0.1
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _SlowHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    async def timed() -> list[float]:
        spent = []
        for _ in range(3):
            started = time.perf_counter()
            assert await workers_healthy_cached([url]) == [url]
            spent.append(time.perf_counter() - started)
            await asyncio.sleep(0.2)  # past the TTL: the next call finds the entry stale
        return spent

    try:
        first, *later = asyncio.run(timed())
    finally:
        server.shutdown()

    assert first >= 0.4  # never seen: probed before answering
    assert all(spent < 0.05 for spent in later)
