from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from simple_history.models import HistoricalRecords

from console import validators
from console.validators import lowercase_slug_validator


def _default_content_policy() -> dict[str, list[str]]:
    return {"blocked_topics": [], "blocked_terms": []}


class Archetype(models.Model):
    """A kind of NPC (vampire, werewolf, ...): persona, style, actions, emotions, barks, policy.

    Every edit is versioned (django-simple-history) so designers can compare and restore.
    """

    world = models.ForeignKey("console.World", on_delete=models.PROTECT, related_name="archetypes")
    slug = models.CharField(max_length=64, unique=True, validators=[lowercase_slug_validator])
    name = models.CharField(max_length=120)
    persona = models.TextField(help_text="The system prompt: who this archetype is and what it never does.")
    speech_style = models.TextField(blank=True, help_text="Register, sentence length, verbal tics.")
    personality_traits = models.JSONField(
        default=dict, blank=True, help_text='Named dimensions from 0 to 1, for example {"cunning": 0.8}.'
    )
    lexicon = models.JSONField(default=list, blank=True, help_text="Words and phrases the archetype favours.")
    allowed_actions = models.JSONField(
        default=list,
        help_text='The only actions a turn may return: [{"name": "bare_fangs", "description": "..."}].',
    )
    emotions = models.JSONField(default=list, help_text='The emotion set, always with "neutral".')
    barks = models.JSONField(
        default=dict,
        help_text="Lines the Bronze tier speaks without the model, per situation: "
        + ", ".join(validators.BARK_SITUATIONS)
        + ".",
    )
    content_policy = models.JSONField(default=_default_content_policy, blank=True)
    base_model = models.ForeignKey(
        "console.BaseModel", on_delete=models.PROTECT, null=True, blank=True, related_name="archetypes"
    )
    # The seeds keep voice, face and body animation outside this system; we only keep where they are.
    voice_service_url = models.URLField(blank=True)
    facial_service_url = models.URLField(blank=True)
    body_service_url = models.URLField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(persona=""), name="archetype_persona_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        checks = {
            "personality_traits": lambda: validators.validate_traits(self.personality_traits),
            "lexicon": lambda: validators.validate_text_list(self.lexicon, what="lexicon entries"),
            "allowed_actions": lambda: validators.validate_actions(self.allowed_actions),
            "emotions": lambda: validators.validate_name_list(
                self.emotions, what="emotions", required=("neutral",)
            ),
            "barks": lambda: validators.validate_barks(self.barks),
            "content_policy": lambda: validators.validate_content_policy(self.content_policy),
        }
        for field, check in checks.items():
            try:
                check()
            except ValidationError as exc:
                errors[field] = exc.messages
        if not self.persona.strip():
            errors["persona"] = ["Write the persona: it is the system prompt every turn starts from."]
        if errors:
            raise ValidationError(errors)

    @property
    def action_names(self) -> list[str]:
        return [action["name"] for action in self.allowed_actions]


class Subfaction(models.Model):
    """A branch of an archetype (a vampire clan, a werewolf pack) that overrides persona details."""

    archetype = models.ForeignKey(Archetype, on_delete=models.CASCADE, related_name="subfactions")
    slug = models.CharField(max_length=64, validators=[lowercase_slug_validator])
    name = models.CharField(max_length=120)
    persona_overrides = models.TextField(blank=True, help_text="Added to the archetype's persona.")
    speech_style_overrides = models.TextField(blank=True)
    trait_overrides = models.JSONField(
        default=dict, blank=True, help_text="Replaces some of the archetype's trait values (0 to 1)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["archetype__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["archetype", "slug"], name="subfaction_slug_unique_per_archetype"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.archetype.slug})" if self.archetype_id else self.name

    def clean(self) -> None:
        if not self.archetype_id:
            return
        try:
            validators.validate_traits(self.trait_overrides, allowed=set(self.archetype.personality_traits))
        except ValidationError as exc:
            raise ValidationError({"trait_overrides": exc.messages}) from exc
