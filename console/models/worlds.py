from django.db import models

from console.validators import lowercase_slug_validator


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


class Region(models.Model):
    """A part of a world. Activation tiers and budgets are counted per region."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="regions")
    slug = models.CharField(max_length=64, validators=[lowercase_slug_validator])
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["world__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["world", "slug"], name="region_slug_unique_per_world"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.world.slug})"
