from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class GameKeyScope(models.TextChoices):
    PLAY = "play", "Talk to NPCs"
    POSITIONS = "positions", "Send world positions"
    OBSERVE = "observe", "Observe turns (spectators, bots)"
    QUESTS = "quests", "Update quest stages (the NPC's quest card)"


def _default_scopes() -> list[str]:
    return [GameKeyScope.PLAY, GameKeyScope.POSITIONS, GameKeyScope.QUESTS]


class GameClientKey(models.Model):
    """A credential for a game client (a build of the game, a bot) on the websocket.

    Only a sha256 of the secret is stored; the secret itself is shown once, at creation.
    """

    name = models.CharField(max_length=120, unique=True)
    # The first characters of the secret, kept in clear so ops can tell keys apart in lists and logs.
    prefix = models.CharField(max_length=16, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
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
