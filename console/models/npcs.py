from django.core.exceptions import ValidationError
from django.db import models
from simple_history.models import HistoricalRecords

from console import validators
from console.validators import lowercase_slug_validator


class NPCStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DORMANT = "dormant", "Dormant"
    DEAD = "dead", "Dead"


class NPC(models.Model):
    """One character in the world. Game clients address it by `slug` (the protocol's npc_id)."""

    slug = models.CharField(max_length=64, unique=True, validators=[lowercase_slug_validator])
    name = models.CharField(max_length=120)
    archetype = models.ForeignKey("console.Archetype", on_delete=models.PROTECT, related_name="npcs")
    subfaction = models.ForeignKey(
        "console.Subfaction", on_delete=models.SET_NULL, null=True, blank=True, related_name="npcs"
    )
    region = models.ForeignKey("console.Region", on_delete=models.PROTECT, related_name="npcs")
    backstory = models.TextField(blank=True)
    personality_overrides = models.JSONField(
        default=dict, blank=True, help_text="Replaces some of the archetype's trait values (0 to 1)."
    )
    # Metres in the world's coordinates; the tiers issue moves NPCs from world.positions frames.
    position_x = models.FloatField(default=0.0)
    position_y = models.FloatField(default=0.0)
    position_z = models.FloatField(default=0.0)
    quest_flags = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=NPCStatus.choices, default=NPCStatus.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name = "NPC"
        verbose_name_plural = "NPCs"
        ordering = ["name"]
        permissions = [("playtest_npc", "Can chat with NPCs on the playtest page")]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=NPCStatus.values), name="npc_status_valid"),
        ]
        indexes = [models.Index(fields=["region", "status"], name="npc_region_status_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        subfaction = self.subfaction
        if self.archetype_id and subfaction is not None and subfaction.archetype_id != self.archetype_id:
            errors["subfaction"] = [
                f"Subfaction {subfaction.name!r} belongs to {subfaction.archetype.name}, "
                f"not to {self.archetype.name}: pick one of this archetype's subfactions or none."
            ]
        if self.archetype_id and self.region_id and self.region.world_id != self.archetype.world_id:
            errors["region"] = [
                f"Region {self.region.name!r} is not in the archetype's world ({self.archetype.world})."
            ]
        if self.archetype_id:
            try:
                validators.validate_traits(
                    self.personality_overrides, allowed=set(self.archetype.personality_traits)
                )
            except ValidationError as exc:
                errors["personality_overrides"] = exc.messages
        try:
            validators.validate_quest_flags(self.quest_flags)
        except ValidationError as exc:
            errors["quest_flags"] = exc.messages
        if errors:
            raise ValidationError(errors)

    @property
    def position(self) -> tuple[float, float, float]:
        return (self.position_x, self.position_y, self.position_z)
