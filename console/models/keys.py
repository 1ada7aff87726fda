from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class GameKeyScope(models.TextChoices):
    PLAY = "play", "Talk to NPCs"
    POSITIONS = "positions", "Send world positions"
    OBSERVE = "observe", "Observe turns (spectators, bots)"
    QUESTS = "quests", "Update quest stages (the NPC's quest card)"
    # A trusted game server: speaks as any player id and signs player tokens for its builds.
    PLAYERS = "players", "Act for any player and sign player tokens (game servers)"


def _default_scopes() -> list[str]:
    # A new key is what a player's build would hold: it talks, and only as the player its token names.
    return [GameKeyScope.PLAY]


class GameClientKey(models.Model):
    """A credential for a game client (a build of the game, a bot) on the websocket.

    Only a sha256 of the secret is stored; the secret itself is shown once, at creation.
    """

    name = models.CharField(max_length=120, unique=True)
    # The first characters of the secret, kept in clear so ops can tell keys apart in lists and logs.
    prefix = models.CharField(max_length=16, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    # HMAC-SHA256(secret, label) (console.player_tokens): checks the player tokens this key signs.
    # Keys made before player tokens have none and cannot sign; make a new key for a game server.
    player_token_key = models.CharField(max_length=64, blank=True, default="", editable=False)
    scopes = ArrayField(
        models.CharField(max_length=16, choices=GameKeyScope.choices),
        default=_default_scopes,
        size=len(GameKeyScope),
    )
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "game client key"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(scopes=[]), name="gameclientkey_has_scope"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
