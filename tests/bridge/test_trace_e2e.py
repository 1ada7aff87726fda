"""A live world, end to end: real Daphne, archiver, vLLM worker, Redis and Postgres. A game
server's positions put an NPC in Gold; a turn with it runs at Gold; its trace page explains the
turn and replays it on the worker; the ops panel counts the turn and the region's tiers."""

from __future__ import annotations

import asyncio
import io
import json
import re

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from websockets.asyncio.client import connect

from console.models import GameClientKey
from console.services.keys import game_key_create
from inference.context import turn_context_build
from inference.turn.replay import turn_replay
from memory.events import turn_event_id
from memory.models import MemoryEvent
from tests.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def _walk_up_and_talk(url: str, key: str, npc: str, region: str) -> tuple[dict, dict]:
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
        await socket.send(json.dumps({"type": "session.start", "player_id": "walker"}))
        positions = {
            "type": "world.positions", "region": region,
            "players": [{"id": "walker", "x": 0.0, "y": 0.0, "z": 0.0}],
            "npcs": [{"id": npc, "x": 12.0, "y": 0.0, "z": 5.0}],
        }  # fmt: skip
        await socket.send(json.dumps(positions))
        await socket.send(
            json.dumps({"type": "npc.say", "request_id": "r1", "npc_id": npc, "text": "Who are you?"})
        )
        tier = end = None
        async with asyncio.timeout(240):
            async for raw in socket:
                frame = json.loads(raw)
                assert frame["type"] not in ("error", "turn.error"), frame
                if frame["type"] == "npc.tier":
                    tier = frame
                if frame["type"] == "turn.end":
                    end = frame
                    break
    assert tier is not None
    assert end is not None
    return tier, end


def test_a_turn_at_gold_is_traced_replayed_and_counted(
    daphne, archiver_process, plain_npc, designer_client, ops_client
):
    key = game_key_create(name="game server", scopes=["play", "positions", "players"])[1]
    region = plain_npc.region.slug

    tier, end = asyncio.run(_walk_up_and_talk(daphne, key, plain_npc.slug, region))

    assert tier["changes"] == [
        {
            "npc_id": plain_npc.slug,
            "tier": "gold",
            "previous": None,
            "distance_m": 13.0,
            "player_id": "walker",
        }
    ]
    wait_for(
        lambda: MemoryEvent.objects.filter(event_id=turn_event_id(end["turn_id"])).exists(),
        timeout_s=60, what="the turn in the archive",
    )  # fmt: skip
    page = designer_client.get(f"/ops/turns/{end['turn_id']}/").content.decode()
    assert "gold (positions)" in page
    assert "Who are you?" in page
    assert "<tr><td>persona</td>" in page  # the prompt's sections with their token counts
    assert "temperature 0.8" in page  # Gold sampling
    replay = designer_client.post(f"/ops/turns/{end['turn_id']}/replay/").content.decode()
    assert 'id="replay-error"' not in replay
    assert 'id="replay-text"></td>' not in replay  # the worker said something
    # The replay went through the turn pipeline like the websocket turn: the same trace fields.
    trace = MemoryEvent.objects.get(event_id=turn_event_id(end["turn_id"])).payload["trace"]
    context = turn_context_build(npc_slug=plain_npc.slug)
    replayed = async_to_sync(turn_replay)(context=context, trace=trace, player_text="Who are you?")
    assert replayed.error == ""
    assert set(replayed.trace) == set(trace)
    assert replayed.trace["messages"] == trace["messages"]
    panel = ops_client.get("/ops/panel/").content.decode()
    assert f'data-region="{region}"' in panel
    assert 'data-tier="gold">Gold 1<' in panel
    assert f"<td>{plain_npc.slug}</td>" in panel  # its cost


def test_the_scripted_walk_takes_an_npc_from_bronze_to_gold_and_back(daphne, plain_npc):
    out = io.StringIO()

    call_command(
        "walk_player", url=daphne, region=plain_npc.region.slug, toward="0,0,0", from_m=100.0, speed=50.0,
        hz=5.0, say="Who goes there?", stdout=out,
    )  # fmt: skip

    lines = out.getvalue().splitlines()
    moves = [move for line in lines for move in re.findall(rf"{plain_npc.slug} (\w+)->(\w+)", line)]
    assert moves == [("new", "bronze"), ("bronze", "silver"), ("silver", "gold"), ("gold", "silver"),
                     ("silver", "bronze")]  # fmt: skip
    assert any(line.startswith("turn t_") and "/ops/turns/t_" in line for line in lines)
    assert not GameClientKey.objects.filter(active=True, name__startswith="walk_player").exists()  # revoked
