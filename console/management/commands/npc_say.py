"""Talk to an NPC from the terminal: the reply streams as the worker generates it.

The turn goes through the turn pipeline (inference.turn) like a game client's, without a player:
nothing is read from or written to any player's memory, and no lore is looked up (that needs the
bridge's Redis and a built pack)."""

import asyncio
import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.models import NPC
from inference.context import turn_context_build
from inference.turn.pipeline import TurnIO, TurnOutcome, TurnRequest, turn_take
from inference.turn.plan import TurnPlan
from inference.workers import workers_probe_now


class _Terminal(TurnIO):
    """The turn, printed as it streams."""

    def __init__(self, command: BaseCommand) -> None:
        self.stdout = command.stdout

    async def turn_delta(self, plan: TurnPlan, text: str) -> None:
        self.stdout.write(text, ending="")
        self.stdout.flush()


class Command(BaseCommand):
    help = "Run one turn of an NPC (e.g. count-valerian) against the running workers and stream it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("npc", help="The NPC's slug.")
        parser.add_argument("text", help="What the player says.")
        parser.add_argument("--tier", default="gold", choices=["gold", "silver", "bronze"])
        parser.add_argument("--greedy", action="store_true", help="Deterministic decoding (temperature 0).")
        parser.add_argument(
            "--trace", action="store_true", help="Print the turn's whole trace as JSON at the end."
        )

    def handle(
        self, *args: Any, npc: str, text: str, tier: str, greedy: bool, trace: bool, **options: Any
    ) -> None:
        if not NPC.objects.filter(slug=npc).exists():
            raise CommandError(f"no NPC {npc!r}: see the NPCs page, or run seed_demo")
        context = turn_context_build(npc_slug=npc)
        request = TurnRequest(
            context=context, player_text=text, tier=tier, greedy=greedy, workers=workers_probe_now()
        )
        self.stdout.write(f"{context.npc_name}: ", ending="")
        outcome: TurnOutcome = asyncio.run(turn_take(request=request, io=_Terminal(self)))
        result = outcome.result
        self.stdout.write("")
        self.stdout.write(
            f"[emotion: {result.emotion}, action: {result.action}, fallbacks: {result.fallbacks or 'none'}]"
        )
        if trace:
            self.stdout.write(jsonlib.dumps(outcome.trace, indent=2))
