from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from simple_history.models import HistoricalRecords


class BaseModel(models.Model):
    """The shared base language model every adapter is trained against (one per worker)."""

    class DType(models.TextChoices):
        BF16 = "bf16", "bfloat16"
        FP16 = "fp16", "float16"
        FP32 = "fp32", "float32"
        INT8 = "int8", "8-bit"
        INT4 = "int4", "4-bit"

    name = models.CharField(max_length=120, unique=True)
    path = models.CharField(max_length=500, help_text="A Hugging Face model folder on the worker's disk.")
    parameter_count = models.BigIntegerField(validators=[MinValueValidator(1)])
    dtype = models.CharField(max_length=8, choices=DType.choices, default=DType.BF16)
    quantization = models.CharField(
        max_length=32, blank=True, help_text="For example awq, gptq, q4_1; empty if none."
    )
    context_length = models.PositiveIntegerField(validators=[MinValueValidator(128)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "base model"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(parameter_count__gt=0), name="basemodel_parameter_count_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(context_length__gte=128), name="basemodel_context_length_min"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AdapterScope(models.TextChoices):
    ARCHETYPE = "archetype", "Archetype"
    SUBFACTION = "subfaction", "Subfaction"
    NPC = "npc", "NPC"


class AdapterTask(models.TextChoices):
    PERSONALITY = "personality", "Personality"
    DIALOGUE_STYLE = "dialogue_style", "Dialogue style"
    ACTION_POLICY = "action_policy", "Action policy"
    EMOTIONAL_RESPONSE = "emotional_response", "Emotional response"
    WORLD_KNOWLEDGE = "world_knowledge", "World knowledge"
    SOCIAL_DYNAMICS = "social_dynamics", "Social dynamics"
    GOAL_PRIORITIZATION = "goal_prioritization", "Goal prioritization"


class AdapterStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    TRAINING = "training", "Training"
    CANDIDATE = "candidate", "Candidate"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"


# Larger ranks are possible in PEFT, but vLLM's --max-lora-rank caps what a worker serves,
# and composition (archetype + subfaction + NPC deltas) is bounded at 64 in total.
MAX_ADAPTER_RANK = 64

sha256_validator = RegexValidator(r"^[0-9a-f]{64}\Z", "Write the sha256 as 64 lowercase hexadecimal digits.")


class Adapter(models.Model):
    """A LoRA adapter for one task, scoped to an archetype, a subfaction or a single NPC.

    At most one adapter is active per (scope target, task): the routing table of a turn.
    """

    scope = models.CharField(max_length=16, choices=AdapterScope.choices, default=AdapterScope.ARCHETYPE)
    archetype = models.ForeignKey(
        "console.Archetype", on_delete=models.PROTECT, null=True, blank=True, related_name="adapters"
    )
    subfaction = models.ForeignKey(
        "console.Subfaction", on_delete=models.PROTECT, null=True, blank=True, related_name="adapters"
    )
    npc = models.ForeignKey(
        "console.NPC", on_delete=models.PROTECT, null=True, blank=True, related_name="adapters"
    )
    task = models.CharField(max_length=32, choices=AdapterTask.choices)
    version = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    rank = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_ADAPTER_RANK)]
    )
    alpha = models.FloatField(validators=[MinValueValidator(0.0)])
    artifact_path = models.CharField(max_length=500, blank=True, help_text="The PEFT adapter folder.")
    sha256 = models.CharField(max_length=64, blank=True, validators=[sha256_validator])
    size_bytes = models.BigIntegerField(default=0, validators=[MinValueValidator(0)])
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="adapters")
    status = models.CharField(max_length=16, choices=AdapterStatus.choices, default=AdapterStatus.DRAFT)
    eval_metrics = models.JSONField(default=dict, blank=True)
    # Its own field, not a key of eval_metrics: every evaluation rewrites eval_metrics whole.
    composition = models.JSONField(
        default=dict,
        blank=True,
        help_text="For a composed adapter: the adapters it was made from, their weights, and how.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["task", "-version"]
        constraints = [
            # Exactly the foreign key that the scope names is set.
            models.CheckConstraint(
                condition=(
                    models.Q(
                        scope=AdapterScope.ARCHETYPE,
                        archetype__isnull=False,
                        subfaction__isnull=True,
                        npc__isnull=True,
                    )
                    | models.Q(
                        scope=AdapterScope.SUBFACTION,
                        archetype__isnull=True,
                        subfaction__isnull=False,
                        npc__isnull=True,
                    )
                    | models.Q(
                        scope=AdapterScope.NPC,
                        archetype__isnull=True,
                        subfaction__isnull=True,
                        npc__isnull=False,
                    )
                ),
                name="adapter_scope_target_matches",
            ),
            # NULLs must compare equal here, or every scope would allow many active adapters.
            models.UniqueConstraint(
                fields=["archetype", "subfaction", "npc", "task"],
                condition=models.Q(status=AdapterStatus.ACTIVE),
                nulls_distinct=False,
                name="adapter_one_active_per_scope_task",
            ),
            models.UniqueConstraint(
                fields=["archetype", "subfaction", "npc", "task", "version"],
                nulls_distinct=False,
                name="adapter_version_unique_per_scope_task",
            ),
            models.CheckConstraint(
                condition=models.Q(rank__gte=1, rank__lte=MAX_ADAPTER_RANK), name="adapter_rank_in_range"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=AdapterStatus.values), name="adapter_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(task__in=AdapterTask.values), name="adapter_task_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.target_label} / {self.task} v{self.version} ({self.status})"

    @property
    def target(self) -> models.Model | None:
        return {
            AdapterScope.ARCHETYPE: self.archetype,
            AdapterScope.SUBFACTION: self.subfaction,
            AdapterScope.NPC: self.npc,
        }.get(AdapterScope(self.scope))

    @property
    def target_label(self) -> str:
        target = self.target
        return getattr(target, "slug", "?") if target is not None else "?"

    def clean(self) -> None:
        targets = {
            AdapterScope.ARCHETYPE: "archetype",
            AdapterScope.SUBFACTION: "subfaction",
            AdapterScope.NPC: "npc",
        }
        scope = str(self.scope)
        wanted = targets.get(AdapterScope(scope)) if scope in AdapterScope.values else None
        errors: dict[str, list[str]] = {}
        for field in targets.values():
            is_set = getattr(self, f"{field}_id") is not None
            if field == wanted and not is_set:
                errors[field] = [f"Scope {scope!r} needs its {field}: pick one."]
            elif field != wanted and is_set:
                errors[field] = [f"Scope {scope!r} uses only its {wanted}: clear {field}."]
        if self.status in {AdapterStatus.CANDIDATE, AdapterStatus.ACTIVE} and not (
            self.artifact_path and self.sha256
        ):
            errors["artifact_path"] = [
                f"A {self.status} adapter needs its artifact path and sha256 "
                "(workers verify the file before loading)."
            ]
        if errors:
            raise ValidationError(errors)
        if self.status == AdapterStatus.ACTIVE:
            clash = Adapter.objects.filter(
                archetype=self.archetype,
                subfaction=self.subfaction,
                npc=self.npc,
                task=self.task,
                status=AdapterStatus.ACTIVE,
            ).exclude(pk=self.pk)
            if clash.exists():
                raise ValidationError(
                    {
                        "status": [
                            f"{clash.first()} is already active for {self.target_label} / {self.task}: "
                            "retire it first (at most one active adapter per scope and task)."
                        ]
                    }
                )
