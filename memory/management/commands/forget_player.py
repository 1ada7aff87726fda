"""`python manage.py forget_player PLAYER_ID`: remove a player from every memory tier."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from redis import Redis

from memory.services import player_forget


class Command(BaseCommand):
    help = "Remove a player from NPC memory: the archive in Postgres, Redis, and every bridge's hot tier."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("player_id", help="The player_id game clients send in session.start.")

    def handle(self, *args: Any, player_id: str, **options: Any) -> None:
        report = player_forget(redis=Redis.from_url(settings.REDIS_URL), player=player_id)
        self.stdout.write(
            f"forgot {player_id}: {report.archived_events} archived events, {report.redis_keys} Redis keys, "
            f"{report.public_facts} public facts, {report.dead_letters} dead letters, "
            f"{report.task_results} task results and {report.cost_entries} cost entries removed; "
            "bridges dropped it from their hot tiers"
        )
