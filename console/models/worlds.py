from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import models

from console.validators import lowercase_slug_validator, tier_bands_check


class World(models.Model):
    """A game world: the root that regions, archetypes and lore belong to."""

    slug = models.CharField(max_length=64, unique=True, validators=[lowercase_slug_validator])
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


if TYPE_CHECKING:  # django-stubs' Manager is generic; Django's is not subscriptable at run time
    _RegionManagerBase = models.Manager["Region"]
else:
    _RegionManagerBase = models.Manager


class RegionManager(_RegionManagerBase):
    """Regions come with their world: a region's name is shown with its world's slug (every
    list of regions, the admin's filters and pickers, would otherwise query per region)."""

    def get_queryset(self) -> models.QuerySet[Region]:
        return super().get_queryset().select_related("world")


class Region(models.Model):
    """A part of a world. Activation tiers and budgets are counted per region."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="regions")
    slug = models.CharField(max_length=64, validators=[lowercase_slug_validator])
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    # Activation tiers (inference.activation): distance bands to the nearest player, with hysteresis
    # (enter inside, leave beyond), and the most NPCs per tier at once, the closest kept.
    gold_enter_m = models.FloatField(default=25.0, help_text="An NPC this close to a player becomes Gold.")
    gold_exit_m = models.FloatField(
        default=35.0, help_text="A Gold NPC farther than this from every player leaves Gold."
    )
    silver_enter_m = models.FloatField(
        default=60.0, help_text="An NPC this close to a player becomes Silver."
    )
    silver_exit_m = models.FloatField(default=75.0, help_text="A Silver NPC farther than this leaves Silver.")
    gold_capacity = models.PositiveIntegerField(
        default=200, help_text="Most Gold NPCs at once; the farthest drop to Silver."
    )
    silver_capacity = models.PositiveIntegerField(
        default=400, help_text="Most Silver NPCs at once; the farthest drop to Bronze."
    )
    token_budget_per_hour = models.PositiveIntegerField(
        default=0,
        help_text="Tokens the region's turns may use per hour; past it, Gold NPCs answer as Silver "
        "(shorter replies) until the hour ends. 0: no budget.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RegionManager()

    class Meta:
        ordering = ["world__name", "name"]
        # The live ops dashboard (tiers, latency, cost): ops watch it, designers too.
        permissions = [("watch_region", "Can watch the live ops dashboard")]
        constraints = [
            models.UniqueConstraint(fields=["world", "slug"], name="region_slug_unique_per_world"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.world.slug})"

    def clean(self) -> None:
        try:
            tier_bands_check(
                gold_enter_m=self.gold_enter_m, gold_exit_m=self.gold_exit_m,
                silver_enter_m=self.silver_enter_m, silver_exit_m=self.silver_exit_m,
                gold_capacity=self.gold_capacity, silver_capacity=self.silver_capacity,
            )  # fmt: skip
        except ValueError as exc:
            raise ValidationError(f"Tier bands: {exc}.") from None
