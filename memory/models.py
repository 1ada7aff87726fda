from django.db import models


class MemoryEventKind(models.TextChoices):
    TURN = "turn", "Turn"  # a player's line and the NPC's reply
    FACT = "fact", "Salient fact"
    CARD = "card", "Card update"  # relationship or quest card
    SUMMARY = "summary", "Session summary"
    FORGET = "forget", "Player forgotten"


class MemoryEvent(models.Model):
    """One thing an NPC lived through, archived for life. Append-only.

    Written only by the archiver from the Redis stream (memory.archiver), never on a turn's
    path. `event_id` is the producer's id: the archive is idempotent on it, so a redelivered
    event is stored once.
    """

    event_id = models.UUIDField(unique=True, editable=False)
    kind = models.CharField(max_length=16, choices=MemoryEventKind.choices)
    npc_slug = models.CharField(max_length=64)
    player_id = models.CharField(max_length=64)
    session_id = models.CharField(max_length=64, blank=True)
    occurred_at = models.DateTimeField()
    payload = models.JSONField(default=dict)
    archived_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "memory event"
        ordering = ["occurred_at", "id"]
        # Named action_model like console's playtest_npc, so console.permissions.groups_sync
        # grants it from GROUP_PERMISSIONS. A public fact is an NPC's fact every player's
        # prompt includes (memory.services.public_fact_publish).
        permissions = [("publish_memoryevent", "Can mark remembered facts as known to every player")]
        indexes = [
            models.Index(fields=["npc_slug", "player_id", "occurred_at"], name="memevent_pair_time_idx"),
            models.Index(fields=["player_id"], name="memevent_player_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=MemoryEventKind.values), name="memevent_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.npc_slug}/{self.player_id} at {self.occurred_at:%Y-%m-%d %H:%M:%S}"


class ForgottenPlayer(models.Model):
    """A player removed from memory (`forget_player`). The archiver drops their events that
    were emitted before `forgotten_at` and were still in the stream."""

    player_id = models.CharField(max_length=64, unique=True)
    forgotten_at = models.DateTimeField()

    class Meta:
        verbose_name = "forgotten player"

    def __str__(self) -> str:
        return f"{self.player_id} (forgotten {self.forgotten_at:%Y-%m-%d %H:%M})"
