"""Talk to an NPC from the terminal: the reply streams as the worker generates it."""

import asyncio
import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.models import NPC
from inference.context import turn_context_build
from inference.turns import turn_result_payload, turn_run
from inference.workers import workers_probe_now


class Command(BaseCommand):
    help = "Run one turn of an NPC (e.g. count-valerian) against the running workers and stream it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("npc", help="The NPC's slug.")
        parser.add_argument("text", help="What the player says.")
        parser.add_argument("--tier", default="gold", choices=["gold", "silver", "bronze"])
        parser.add_argument("--greedy", action="store_true", help="Deterministic decoding (temperature 0).")
        parser.add_argument(
            "--trace", action="store_true", help="Print the whole turn result as JSON at the end."
        )

    def handle(
        self, *args: Any, npc: str, text: str, tier: str, greedy: bool, trace: bool, **options: Any
    ) -> None:
        if not NPC.objects.filter(slug=npc).exists():
            raise CommandError(f"no NPC {npc!r}: see the NPCs page, or run seed_demo")
        context = turn_context_build(npc_slug=npc)
        healthy = workers_probe_now()

        async def show(piece: str) -> None:
            self.stdout.write(piece, ending="")
            self.stdout.flush()

        self.stdout.write(f"{context.npc_name}: ", ending="")
        result = asyncio.run(
            turn_run(
                context=context, player_text=text, workers=healthy, tier=tier, on_delta=show, greedy=greedy
            )
        )
        self.stdout.write("")
        self.stdout.write(
            f"[emotion: {result.emotion}, action: {result.action}, fallbacks: {result.fallbacks or 'none'}]"
        )
        if trace:
            self.stdout.write(jsonlib.dumps(turn_result_payload(result), indent=2))
