"""A scripted player walks up to a place and back, as a game server would report it: the demo
of activation tiers (`make run` first, then watch /ops/).

    python manage.py walk_player [--region plague-marsh] [--toward 1530,1,1600] [--from-m 160]

Every frame (--hz a second) it sends `world.positions` for the region: the player, and every
active NPC of the region at its position from the console. The player walks at --speed m/s
from --from-m metres away to the spot and back; at the nearest point it speaks to the closest
Gold NPC (a real turn). It prints each `npc.tier` change and the region's counts, so the NPCs
can be seen going Bronze -> Silver -> Gold and back; the ops dashboard shows the same live.

It uses a game key made for the walk (scopes play and positions), revoked when it ends.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from websockets.asyncio.client import connect

from console.models import NPC, Region
from console.models.npcs import NPCStatus
from console.services.keys import game_key_create, game_key_revoke

DEFAULT_URL = "ws://127.0.0.1:8000/ws/game/"
TURN_WAIT_S = 180.0


def _point(text: str) -> tuple[float, float, float]:
    try:
        x, y, z = (float(part) for part in text.split(","))
    except ValueError:
        raise CommandError(f"--toward {text!r}: write x,y,z in metres, for example 1530,1,1600") from None
    return x, y, z


class Command(BaseCommand):
    help = "Walk a scripted player up to a place and back, sending positions (the activation tiers demo)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--region", default="plague-marsh")
        parser.add_argument("--toward", default="1530,1,1600", help="x,y,z the player walks to (the horde)")
        parser.add_argument("--from-m", type=float, default=160.0, help="How far away the walk starts.")
        parser.add_argument("--speed", type=float, default=8.0, help="Metres per second (a run).")
        parser.add_argument("--hz", type=float, default=5.0, help="Positions frames per second.")
        parser.add_argument("--say", default="What are you?", help="What the player says at the turn.")
        parser.add_argument("--url", default=DEFAULT_URL)
        parser.add_argument("--player", default="walker-1")

    def handle(self, *args: Any, **options: Any) -> None:
        region = Region.objects.filter(slug=options["region"]).first()
        if region is None:
            raise CommandError(f"no region {options['region']!r}: run `make run` (it seeds the demo world)")
        npcs = list(
            NPC.objects.filter(region=region, status=NPCStatus.ACTIVE).values_list(
                "slug", "position_x", "position_y", "position_z"
            )
        )
        if not npcs:
            raise CommandError(f"region {region.slug} has no active NPC to walk past")
        if options["speed"] <= 0 or options["hz"] <= 0 or options["from_m"] <= 0:
            raise CommandError("--speed, --hz and --from-m must be positive")
        key, secret = game_key_create(
            name=f"walk_player {options['player']}", scopes=["play", "positions", "players"]
        )
        try:
            asyncio.run(self._walk(secret, npcs, region_slug=region.slug, **options))
        except OSError as exc:
            raise CommandError(f"could not reach {options['url']}: {exc}; is `make run` running?") from None
        finally:
            game_key_revoke(key=key)

    async def _walk(
        self, secret: str, npcs: list[tuple[str, float, float, float]], *, region_slug: str, **options: Any
    ) -> None:
        target = _point(options["toward"])
        start = (target[0] - options["from_m"], target[1], target[2])
        steps = max(1, round(options["from_m"] / options["speed"] * options["hz"]))
        # There and back: the distance to the spot at each frame.
        path = [1 - index / steps for index in range(steps + 1)]
        path += path[::-1][1:]
        npc_positions = [{"id": slug, "x": x, "y": y, "z": z} for slug, x, y, z in npcs]
        headers = {"Authorization": f"Bearer {secret}"}
        async with connect(options["url"], additional_headers=headers, max_size=2**22) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": options["player"]}))
            self.turn_ended = asyncio.Event()
            reader = asyncio.create_task(self._read(socket))
            spoke = False
            for index, share in enumerate(path):
                x = target[0] - (target[0] - start[0]) * share
                frame = {
                    "type": "world.positions", "region": region_slug,
                    "players": [{"id": options["player"], "x": x, "y": target[1], "z": target[2]}],
                    "npcs": npc_positions,
                }  # fmt: skip
                await socket.send(json.dumps(frame))
                if index == steps and not spoke:  # the nearest point: talk to the nearest NPC
                    nearest = min(npcs, key=lambda npc: math.dist((x, target[1], target[2]), npc[1:]))
                    say = {"type": "npc.say", "request_id": "walk-1", "npc_id": nearest[0]}
                    await socket.send(json.dumps({**say, "text": options["say"]}))
                    spoke = True
                await asyncio.sleep(1 / options["hz"])
            await asyncio.sleep(1.0)  # the last changes
            if spoke:  # a turn on a CPU worker takes seconds: wait for its end (or give up)
                try:
                    await asyncio.wait_for(self.turn_ended.wait(), timeout=TURN_WAIT_S)
                except TimeoutError:
                    self.stderr.write(f"no turn.end within {TURN_WAIT_S:.0f} s")
            reader.cancel()

    async def _read(self, socket: Any) -> None:
        async for raw in socket:
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "npc.tier":
                moved = ", ".join(
                    f"{change['npc_id']} {change['previous'] or 'new'}->{change['tier']}"
                    for change in frame["changes"][:8]
                )
                more = len(frame["changes"]) - 8
                counts = frame["counts"]
                self.stdout.write(
                    f"tiers gold {counts['gold']} silver {counts['silver']} bronze {counts['bronze']}: "
                    f"{moved}{f' and {more} more' if more > 0 else ''}"
                )
            elif kind == "turn.end":
                self.stdout.write(
                    f"turn {frame['turn_id']}: {frame['text']!r} (trace: /ops/turns/{frame['turn_id']}/)"
                )
            elif kind in ("error", "turn.error"):
                self.stderr.write(f"{kind}: {frame.get('code')}: {frame.get('message')}")
            if kind in ("turn.end", "turn.error"):
                self.turn_ended.set()
            if kind in ("npc.tier", "turn.end"):  # one ack covers every frame before it
                await socket.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
