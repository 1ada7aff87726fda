from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.models import GameClientKey
from console.services.keys import PLAYER_TOKEN_MAX_TTL_S, player_token_mint


class Command(BaseCommand):
    help = (
        "Sign a player token with a game server key (the 'players' scope): a build that holds a "
        "play-only key and this token may start sessions as this player only. Printed alone on the "
        "last line. Game servers normally sign their own tokens (console/player_tokens.py)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="The name of the signing key (it needs the 'players' scope).")
        parser.add_argument("player_id", help="The player id the token lets a client use.")
        parser.add_argument(
            "--ttl",
            type=int,
            default=3600,
            help=f"Seconds the token is valid (1 to {PLAYER_TOKEN_MAX_TTL_S}).",
        )

    def handle(self, *args: Any, key: str, player_id: str, ttl: int, **options: Any) -> None:
        signer = GameClientKey.objects.filter(name=key, active=True).first()
        if signer is None:
            raise CommandError(f"no active game key is named {key!r}")
        try:
            token = player_token_mint(key=signer, player_id=player_id, ttl_s=ttl)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Player token for {player_id!r}, valid {ttl} s, signed by {signer}:")
        self.stdout.write(token)
