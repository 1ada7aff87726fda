"""Training's system of record: what designers teach an archetype, the datasets built from it,
and the training jobs that turn a dataset into an adapter."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from console.jobs.models import Job
from console.models import AdapterTask


class ExampleExchange(models.Model):
    """A designer-written exchange: what a player says and how the archetype answers (and,
    for the choice tasks, what it does or feels). Datasets take these first."""

    archetype = models.ForeignKey("console.Archetype", on_delete=models.CASCADE, related_name="examples")
    task = models.CharField(max_length=32, choices=AdapterTask.choices, default=AdapterTask.DIALOGUE_STYLE)
    player = models.TextField(max_length=2000, help_text="What the player says.")
    reply = models.TextField(max_length=2000, blank=True, help_text="How the archetype answers, in voice.")
    action = models.CharField(max_length=64, blank=True, help_text="For action policy: one allowed action.")
    emotion = models.CharField(max_length=32, blank=True, help_text="For emotional response: one emotion.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["archetype", "task", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(reply="", action="", emotion=""), name="example_teaches_something"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.archetype}: {self.player[:40]}"


class TranscriptApproval(models.Model):
    """A turn from the archive that a designer marked good: play feeds training."""

    event = models.OneToOneField("memory.MemoryEvent", on_delete=models.CASCADE, related_name="approval")
    archetype = models.ForeignKey(
        "console.Archetype", on_delete=models.CASCADE, related_name="approved_turns"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    approved_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-approved_at"]

    def __str__(self) -> str:
        return f"turn {self.event_id} for {self.archetype}"


class Dataset(models.Model):
    """One built dataset of an archetype's task: JSONL files under DATASETS_DIR and a manifest
    with each file's sha256 and where every example came from. Training refuses a dataset whose
    files no longer match the manifest."""

    archetype = models.ForeignKey("console.Archetype", on_delete=models.CASCADE, related_name="datasets")
    task = models.CharField(max_length=32, choices=AdapterTask.choices)
    version = models.PositiveIntegerField()
    path = models.CharField(
        max_length=500, help_text="The folder holding train.jsonl, heldout.jsonl, manifest.json."
    )
    manifest = models.JSONField(default=dict)
    manifest_sha256 = models.CharField(max_length=64)
    train_examples = models.PositiveIntegerField(default=0)
    heldout_examples = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["archetype", "task", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["archetype", "task", "version"], name="dataset_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.archetype.slug} {self.task} v{self.version}"


class TrainingJob(Job):
    """A LoRA training run: one dataset in, one candidate adapter out.

    Exactly one execution holds the job at a time: `lease_owner` until `lease_until`, renewed by
    a heartbeat; a broker redelivery finds the lease held and leaves. A run that died leaves its
    lease to expire; the next execution resumes from `checkpoint_step`."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="training_jobs")
    base_model = models.ForeignKey("console.BaseModel", on_delete=models.PROTECT, related_name="+")
    steps = models.PositiveIntegerField(default=200)
    rank = models.PositiveSmallIntegerField(default=8)
    alpha = models.PositiveSmallIntegerField(default=16)
    learning_rate = models.FloatField(default=2e-3)
    step = models.PositiveIntegerField(default=0, help_text="Steps done.")
    losses = models.JSONField(default=list, blank=True, help_text="Training loss per step.")
    checkpoint_step = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0, help_text="Executions that took the lease.")
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    evaluate = models.BooleanField(
        default=True,
        help_text="Evaluate the adapter when training ends, and promote it if it passes its gate.",
    )
    adapter = models.ForeignKey(
        "console.Adapter", on_delete=models.SET_NULL, null=True, blank=True, related_name="training_jobs"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(steps__gte=1), name="training_steps_positive"),
            models.CheckConstraint(condition=models.Q(rank__gte=1, rank__lte=64), name="training_rank_range"),
        ]

    def __str__(self) -> str:
        return f"training {self.pk}: {self.dataset}"


class EvalRun(Job):
    """A candidate adapter measured against its baseline (the active adapter of its task, else
    the base model) on the same prompts: metrics side by side, the gate's verdict, and whether
    the candidate was promoted."""

    adapter = models.ForeignKey("console.Adapter", on_delete=models.CASCADE, related_name="eval_runs")
    baseline = models.CharField(max_length=200, help_text="What the candidate was compared with.")
    candidate_metrics = models.JSONField(default=dict, blank=True)
    baseline_metrics = models.JSONField(default=dict, blank=True)
    gate = models.JSONField(
        default=dict, blank=True, help_text="{metric: minimum} the candidate had to meet."
    )
    passed = models.BooleanField(null=True, blank=True)
    reasons = models.JSONField(default=list, blank=True, help_text="The gate's verdict, metric by metric.")
    samples = models.JSONField(default=list, blank=True, help_text="Some prompts with both answers.")
    promoted = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"eval {self.pk}: {self.adapter}"


class ProvisionRun(Job):
    """One click's worth of work for an archetype: per hot-path task, a dataset, a training job
    and an eval, one task after the other (training.provisioning). `plan` holds a step per task:
    {"task", "steps", "dataset", "job", "eval", "outcome"} as they come to exist."""

    archetype = models.ForeignKey(
        "console.Archetype", on_delete=models.CASCADE, related_name="provision_runs"
    )
    plan = models.JSONField(default=list)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One run under way per archetype: a second click cannot start a parallel chain.
            models.UniqueConstraint(
                fields=["archetype"],
                condition=models.Q(status__in=["queued", "running"]),
                name="provision_one_running_per_archetype",
            ),
        ]

    def __str__(self) -> str:
        return f"provisioning {self.pk}: {self.archetype}"
