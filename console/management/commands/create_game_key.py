from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.models import GameKeyScope
from console.services.keys import game_key_create


class Command(BaseCommand):
    help = "Create a game client key. The secret is printed alone on the last line, once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="A name ops will recognise, for example 'unity-build-42'.")
        parser.add_argument(
            "--scope",
            action="append",
            choices=GameKeyScope.values,
            dest="scopes",
            help="Repeat for several scopes (default: play; a game server: players, positions, quests).",
        )

    def handle(self, *args: Any, name: str, scopes: list[str] | None, **options: Any) -> None:
        try:
            key, secret = game_key_create(name=name, scopes=scopes)
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
            ) from exc
        self.stdout.write(
            f"Created game key {key.name!r} ({key.prefix}…) with scopes {', '.join(key.scopes)}."
        )
        self.stdout.write("Store the secret now; it is not kept and cannot be shown again:")
        self.stdout.write(secret)
