"""The ops dashboard and a turn's trace page in headless Chromium (Playwright), on the real
Daphne, archiver and vLLM worker: a game server's positions move an NPC from Bronze to Gold and
the open dashboard shows it without a reload; a turn with it shows up in the turn figures; its
trace page explains it and replays it."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, User
from playwright.sync_api import expect, sync_playwright
from websockets.asyncio.client import connect

from console.permissions import DESIGNERS, OPS, groups_sync
from console.services.keys import game_key_create
from memory.events import turn_event_id
from memory.models import MemoryEvent
from tests.bridge.conftest import CHROMIUM_ARGS, PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _game_server(url: str, key: str, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send `frames` as a game server would, in a thread of its own (Playwright's sync API owns
    this one's event loop); every frame received until the last turn.end, or a second of quiet."""
    received: list[dict[str, Any]] = []

    async def run() -> None:
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": "walker"}))
            for frame in frames:
                await socket.send(json.dumps(frame))
            wants_turn = any(frame["type"] == "npc.say" for frame in frames)
            async with asyncio.timeout(240):
                while True:
                    try:
                        raw = await asyncio.wait_for(socket.recv(), timeout=None if wants_turn else 1.0)
                    except TimeoutError:
                        return
                    received.append(json.loads(raw))
                    if received[-1]["type"] in ("turn.end", "turn.error", "error"):
                        return

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    thread.join(timeout=300)
    return received


def _positions(region: str, npc: str, distance_m: float) -> dict[str, Any]:
    return {
        "type": "world.positions", "region": region,
        "players": [{"id": "walker", "x": 0.0, "y": 0.0, "z": 0.0}],
        "npcs": [{"id": npc, "x": distance_m, "y": 0.0, "z": 0.0}],
    }  # fmt: skip


def _sign_in(page: Any, console: str, username: str, next_url: str) -> None:
    page.goto(f"{console}/admin/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{console}{next_url}")


def test_the_dashboard_follows_tiers_and_turns_live_and_a_trace_explains_and_replays_a_turn(
    chromium,
    daphne,
    archiver_process,
    plain_npc,
):
    groups_sync(apps)  # a transactional test flushed the groups the migrations made
    for name, group in (("opsperson", OPS), ("designer", DESIGNERS)):
        user = User.objects.create_user(name, password=PASSWORD, is_staff=True)
        user.groups.add(Group.objects.get(name=group))
    key = game_key_create(name="game server", scopes=["play", "positions", "players"])[1]
    npc, region = plain_npc.slug, plain_npc.region.slug
    console = daphne.removesuffix("/ws/game/").replace("ws://", "http://")
    far = _game_server(daphne, key, [_positions(region, npc, 300.0)])
    assert [frame["changes"][0]["tier"] for frame in far if frame["type"] == "npc.tier"] == ["bronze"]

    # No ORM below until the browser closes: Playwright's sync API runs an event loop here.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        ops = browser.new_page()
        _sign_in(ops, console, "opsperson", "/ops/")
        region_box = ops.locator(f'section.ops-region[data-region="{region}"]')
        expect(region_box.locator('[data-tier="bronze"]')).to_have_text("Bronze 1")
        expect(region_box.locator("svg.ops-chart")).to_have_count(1)  # the tier plot
        ops.evaluate("() => { window.notReloaded = true; }")
        turns_before = int(ops.locator("#ops-turns-hour").text_content() or 0)  # earlier tests' turns

        # The player walks up: Gold, and the NPC is spoken to.
        near = _game_server(daphne, key, [
            _positions(region, npc, 60.0),  # Silver
            _positions(region, npc, 12.0),  # Gold
            {"type": "npc.say", "request_id": "r1", "npc_id": npc, "text": "Who are you?"},
        ])  # fmt: skip
        expect(region_box.locator('[data-tier="gold"]')).to_have_text("Gold 1", timeout=10_000)
        expect(ops.locator("#ops-turns-hour")).to_have_text(str(turns_before + 1), timeout=10_000)
        expect(ops.locator("#ops-total-p50")).not_to_have_text("–")
        assert ops.evaluate("() => window.notReloaded") is True  # updated in place by htmx
        end = next(frame for frame in near if frame["type"] == "turn.end")
        moves = [(c["previous"], c["tier"]) for f in near if f["type"] == "npc.tier" for c in f["changes"]]
        assert moves == [("bronze", "silver"), ("silver", "gold")]

        # Back away: Gold to Silver (beyond 35 m), then Bronze (beyond 75 m).
        _game_server(daphne, key, [_positions(region, npc, 50.0), _positions(region, npc, 200.0)])
        expect(region_box.locator('[data-tier="bronze"]')).to_have_text("Bronze 1", timeout=10_000)

        # The trace, once archived.
        designer = browser.new_page()
        _sign_in(designer, console, "designer", "/admin/")
        trace_url = f"{console}/ops/turns/{end['turn_id']}/"
        for _ in range(60):
            if designer.goto(trace_url).status == 200:
                break
            designer.wait_for_timeout(1000)
        expect(designer.locator("#trace-summary")).to_contain_text("gold (positions)")
        expect(designer.locator("#trace-player")).to_have_text("Who are you?")
        expect(designer.locator("#trace-sections")).to_contain_text("persona")
        designer.click("#trace-replay-button")
        expect(designer.locator("#replay-text")).not_to_be_empty(timeout=120_000)
        replayed = designer.locator("#replay-text").text_content()
        browser.close()

    assert replayed.strip()
    trace = MemoryEvent.objects.get(event_id=turn_event_id(end["turn_id"])).payload["trace"]
    assert trace["tier"] == "gold"
    assert trace["region"] == region
