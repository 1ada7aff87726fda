"""The ops dashboard and the turn trace pages: permissions, the figures they compute from real
Redis and Postgres rows, escaping, and a clear 404 (tests/bridge/test_trace_e2e.py: a real
turn's trace and replay)."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.test import Client
from django.utils import timezone
from redis.asyncio import Redis

from inference.observability import RECENT_TURNS_KEY, turn_figures, turn_observe
from memory.events import turn_event_id
from memory.models import MemoryEvent, MemoryEventKind
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_turn_figures_compute_rates_percentiles_and_fallbacks_from_recent_turns():
    now = 10_000.0
    entries = [
        {"at": now - 10, "tier": "gold", "ttft_ms": 100.0, "total_ms": 1000.0, "completion_tokens": 30,
         "fallbacks": []},
        {"at": now - 20, "tier": "gold", "ttft_ms": 300.0, "total_ms": 3000.0, "completion_tokens": 30,
         "fallbacks": ["adapter_missing:dialogue_style", "deadline"]},
        {"at": now - 600, "tier": "silver", "ttft_ms": 200.0, "total_ms": 2000.0, "completion_tokens": 10,
         "fallbacks": ["adapter_missing:action_policy"]},
        {"at": now - 4000, "tier": "gold", "ttft_ms": 9.0, "total_ms": 9.0, "completion_tokens": 99,
         "fallbacks": ["worker_down"]},  # over an hour ago: not counted
    ]  # fmt: skip

    figures = turn_figures(entries, now=now)

    assert figures.turns_per_s == round(2 / 60, 3)  # two turns in the last minute
    assert figures.tokens_per_s == 1.0  # 60 completion tokens in 60 s
    assert figures.turns_last_hour == 3
    assert figures.total_p50_ms == 2000.0
    assert figures.total_p95_ms == 3000.0
    assert figures.ttft_p50_ms == 200.0
    assert figures.fallbacks == {"adapter_missing": 2, "deadline": 1}
    assert len(figures.per_minute) == 60
    assert sum(count for _, count, _, _ in figures.per_minute) == 3


@pytest.mark.parametrize(("group", "status"), [("designers", 200), ("ops", 200), (None, 403)])
def test_the_dashboard_needs_the_watch_permission(group, status):
    from django.contrib.auth.models import Group

    user = UserFactory(is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)

    assert client.get("/ops/").status_code == status
    assert client.get("/ops/panel/").status_code == status
    assert Client().get("/ops/").status_code == 302  # to the login page


def test_the_panel_shows_the_turns_and_costs_observed(ops_client, redis_client, settings):
    settings.INFERENCE_WORKERS = ["http://127.0.0.1:9"]  # nobody answers: shown as down

    async def observe():
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            for total in (800.0, 1200.0):
                await turn_observe(
                    redis, npc="bloated-tom", archetype="zombie", region="fen", player="p1",
                    payload={"tier": "gold", "worker": "w",
                             "usage": {"prompt_tokens": 400, "completion_tokens": 20},
                             "timing": {"ttft_ms": 150.0, "total_ms": total}, "fallbacks": ["deadline"]},
                )  # fmt: skip
        finally:
            await redis.aclose()

    asyncio.run(observe())
    page = ops_client.get("/ops/panel/").content.decode()

    assert redis_client.llen(RECENT_TURNS_KEY) == 2
    assert '<span class="value" id="ops-turns-hour">2</span>' in page
    assert '<span class="value" id="ops-total-p95">1200.0</span>' in page
    assert "<td>bloated-tom</td><td>840</td><td>2.0</td>" in page  # tokens and worker seconds
    assert "top spenders, last 24 hours" in page
    assert "<td>deadline</td><td>2</td>" in page
    assert 'class="bad"' in page  # the worker that does not answer
    assert "<svg" in page  # the latency plot


def _archived_turn(turn_id: str, *, player_text: str, trace: dict) -> MemoryEvent:
    return MemoryEvent.objects.create(
        event_id=turn_event_id(turn_id), kind=MemoryEventKind.TURN, npc_slug="bloated-tom",
        player_id="p1", occurred_at=timezone.now(),
        payload={"player": player_text, "npc": "Hnnngh...", "emotion": "hungry", "action": "groan",
                 "trace": trace},
    )  # fmt: skip


def test_a_trace_explains_the_turn_and_escapes_what_was_said(designer_client):
    trace = {
        "turn_id": "t_abc", "tier": "silver", "tier_reason": "region_budget", "region": "fen",
        "archetype": "zombie", "archetype_version": 12, "adapters": {"dialogue_style": "a3-zombie-v1"},
        "worker": "http://w", "fallbacks": ["deadline"], "timing": {"ttft_ms": 120.0, "total_ms": 900.0},
        "usage": {"prompt_tokens": 640, "completion_tokens": 12},
        "sampling": {"temperature": 0.7, "seed": None, "priority": 1},
        "memory": {"source": "warm", "turns": 3, "facts": 1},
        "prompt_sections": {"persona": 300, "lore": 200, "player": 20}, "dropped": ["history:1"],
        "lore": [{"chunk": 7, "score": 0.61}], "lore_state": "used",
        "messages": [{"role": "system", "content": "You are a zombie."},
                     {"role": "user", "content": "<player_says><script>alert(1)</script></player_says>"}],
    }  # fmt: skip
    _archived_turn("t_abc", player_text="<script>alert(1)</script>", trace=trace)

    page = designer_client.get("/ops/turns/t_abc/").content.decode()

    assert "silver (region_budget)" in page
    assert "version 12" in page
    assert "a3-zombie-v1" in page
    assert "<tr><td>persona</td><td>300</td></tr>" in page
    assert "<tr><th>total</th><th>520</th></tr>" in page
    assert "history:1" in page
    assert "<td>7</td><td>0.61</td>" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'id="trace-replay-button"' in page  # designers may replay


def test_an_unknown_turn_says_why_it_may_be_missing(designer_client):
    response = designer_client.get("/ops/turns/t_nothing/")

    assert response.status_code == 404
    assert b"is the archiver running?" in response.content


def test_replay_without_a_worker_says_so_and_needs_the_playtest_permission(designer_client, settings):
    settings.INFERENCE_WORKERS = ["http://127.0.0.1:9"]
    from inference.workers import worker_mark_down

    worker_mark_down("http://127.0.0.1:9")
    from tests.factories import NPCFactory

    NPCFactory(slug="bloated-tom")
    trace = {
        "turn_id": "t_r",
        "messages": [{"role": "user", "content": "Hello?"}],
        "sampling": {"max_tokens": 8},
    }
    _archived_turn("t_r", player_text="Hello?", trace=trace)
    nobody = Client()
    nobody.force_login(UserFactory(is_staff=True))

    replayed = designer_client.post("/ops/turns/t_r/replay/").content.decode()

    assert "no healthy worker" in replayed
    assert nobody.post("/ops/turns/t_r/replay/").status_code == 403


def test_capacity_arithmetic_shows_the_seeds_70b_error_and_sizes_servers_from_a_measurement(tmp_path):
    from console.capacity import PRESETS, TierLoad, measured_worker_tokens_s, memory_plan, servers_needed

    big = memory_plan(
        PRESETS["llama-3-70b"], quantization="int4", adapters=0, rank=8, targets=4, context=2048,
        sequences=1, kv_bytes=2, overhead_gb=0, gpu_gb=40,
    )  # fmt: skip
    small = memory_plan(
        PRESETS["llama-3-8b"], quantization="fp16", adapters=32, rank=8, targets=4, context=2048,
        sequences=64, kv_bytes=2, overhead_gb=2, gpu_gb=40,
    )  # fmt: skip
    plan = servers_needed(
        [TierLoad("gold", 200, 2, 96), TierLoad("silver", 400, 1, 48)], worker_tokens_s=100, headroom=0.5
    )
    (tmp_path / "multilora.json").write_text('{"adapters": 8, "ours": {"adapters_tokens_s": 41.5}}')

    assert big.weights == 35.3e9  # not 21 GB
    assert small.kv_cache == 2 * 32 * 8 * 128 * 2 * 2048 * 64  # 17.2 GB
    assert small.adapters == 32 * 8 * (2 * 4096) * 4 * 32 * 2
    assert small.total == pytest.approx(35.78e9, rel=1e-3)  # 16.06 + 0.54 + 17.18 + 2 GB
    assert small.fits
    assert plan.demand_tokens_s == 200 * 2 / 60 * 96 + 400 / 60 * 48
    assert plan.servers == 20  # ceil(960 / 50)
    assert measured_worker_tokens_s(tmp_path)[0] == 41.5
    (tmp_path / "dated").mkdir()
    (tmp_path / "dated" / "multilora.json").write_text(
        json.dumps(
            {"ours": {"adapters_tokens_s": 60.0}, "adapters": 8, "dtype": "bfloat16", "cpu_model": "Xeon"}
        )
    )
    assert measured_worker_tokens_s(tmp_path / "dated") == (
        60.0,
        "bench.multilora, undated, 8 adapters, bfloat16, Xeon",
    )
    assert measured_worker_tokens_s(tmp_path / "nowhere")[0] is None


def test_the_capacity_page_shows_formulas_and_refuses_bad_input(ops_client, settings, tmp_path):
    settings.BENCH_DIR = tmp_path  # not measured here

    page = ops_client.get("/ops/capacity/?model=llama-3-70b&quantization=int4&gpu_gb=40&adapters=0&rank=8"
                          "&targets=4&context=2048&sequences=1&kv_bytes=2&overhead_gb=0&gold_npcs=200"
                          "&gold_turns_per_minute=2&silver_npcs=400&silver_turns_per_minute=1"
                          "&worker_tokens_s=100").content.decode()  # fmt: skip
    bad = ops_client.get("/ops/capacity/?gpu_gb=-3").content.decode()

    assert "<code>70,600,000,000 parameters x 0.5 bytes (int4)</code></td><td>35.30</td>" in page
    assert 'id="capacity-workers">14<' in page  # ceil(960 / 70)
    assert "Ensure this value is greater than or equal to 1" in bad


def _observe_many(settings, turns: list[dict]) -> None:
    async def observe():
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            for turn in turns:
                await turn_observe(
                    redis, npc=turn.get("npc", "bloated-tom"), archetype="zombie", region="fen",
                    player=turn["player"],
                    payload={"tier": "gold", "worker": "w",
                             "usage": {"prompt_tokens": turn["tokens"], "completion_tokens": 0},
                             "timing": {"total_ms": 100.0}},
                )  # fmt: skip
        finally:
            await redis.aclose()

    asyncio.run(observe())


def test_costs_of_thousands_of_players_are_kept_in_expiring_buckets_and_read_top_n(redis_client, settings):
    # Issue 17 item 6: one hash field per player forever, read whole on every 2 s poll.
    from inference.observability import COST_KEPT_S, cost_top

    _observe_many(settings, [{"player": f"p{index}", "tokens": index + 1} for index in range(5000)])

    table = cost_top(redis_client, limit=10)

    assert [row[0] for row in table["player"]] == [f"p{index}" for index in range(4999, 4989, -1)]
    assert table["player"][0] == ("p4999", 5000, 0.1)
    assert table["npc"] == [("bloated-tom", 5000 * 5001 // 2, 500.0)]
    keys = [key.decode() for key in redis_client.scan_iter(match="ops:*", count=1000) if key != b"ops:turns"]
    assert not redis_client.exists("ops:cost:player", "ops:worker_ms:player")  # no hash per kind
    for key in keys:
        assert redis_client.type(key) != b"hash"
        assert 0 < redis_client.ttl(key) <= COST_KEPT_S, key  # every ops key expires
    assert len(keys) <= 2 * 2 * 4 + 1  # a bucket per kind and figure (and a read cache each), not per player


def test_forgetting_a_player_removes_them_from_every_cost_bucket(redis_client, settings):
    from inference.observability import cost_top, ops_player_forget

    _observe_many(settings, [{"player": "alice", "tokens": 50}, {"player": "bob", "tokens": 40}])
    cost_top(redis_client)  # a dashboard read cached the window's totals
    redis_client.hset("ops:cost:player", "alice", 50)  # the old unbounded hash, before this change

    removed = ops_player_forget(redis_client, "alice")

    assert removed >= 2
    assert [row[0] for row in cost_top(redis_client)["player"]] == ["bob"]
    assert not redis_client.hexists("ops:cost:player", "alice")
    assert all(
        redis_client.zscore(key, "alice") is None
        for key in redis_client.scan_iter(match="ops:*player*")
        if redis_client.type(key) == b"zset"
    )


# Transactional: tiers_apply reads the region through its own connection, as in Daphne.
@pytest.mark.django_db(transaction=True)
def test_the_panel_shows_each_regions_tiers_with_its_world(ops_client, redis_client, settings):
    from types import SimpleNamespace

    from inference.activation import tiers_apply, tiers_forget
    from tests.factories import NPCFactory

    npc = NPCFactory()
    redis_client.hset("tiers:region:old-region", mapping={"gold": 1})  # before worlds were in keys

    async def apply():
        redis = Redis.from_url(settings.REDIS_URL)
        try:
            point = SimpleNamespace(id=npc.slug, x=5.0, y=0.0, z=0.0)
            player = SimpleNamespace(id="alice", x=0.0, y=0.0, z=0.0)
            await tiers_apply(redis, SimpleNamespace(region=npc.region.slug, npcs=[point], players=[player]))
        finally:
            await redis.aclose()

    tiers_forget()
    asyncio.run(apply())
    tiers_forget()
    page = ops_client.get("/ops/panel/").content.decode()

    assert f'data-region="{npc.region.slug}" data-world="{npc.region.world.slug}"' in page
    assert 'data-tier="gold">Gold 1<' in page
    assert "old-region" not in page
