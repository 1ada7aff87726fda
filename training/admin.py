"""Training in the console: example exchanges on the archetype page, datasets (built from a
form), training jobs (started from a dataset, followed live, cancelled), evaluations (followed
live, candidate and baseline side by side) and approved turns."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from console.jobs.admin import JobAdminMixin
from console.jobs.models import JOB_ENDED, JobStatus
from console.models import Archetype
from training.datasets import DatasetError, dataset_build, dataset_check
from training.eval.harness import evaluation_summary
from training.eval.metrics import gate_metric_check
from training.jobs import TrainingJobError, training_job_cancel, training_job_start
from training.models import Dataset, EvalRun, ExampleExchange, ProvisionRun, TrainingJob, TranscriptApproval
from training.plots import loss_plot_svg
from training.provisioning import ProvisionError, provision_start


class ExampleExchangeInline(admin.TabularInline):
    """Designer-written exchanges on the archetype page: datasets take these first."""

    model = ExampleExchange
    fields = ["task", "player", "reply", "action", "emotion"]
    extra = 1

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        kwargs["widgets"] = {
            "player": forms.Textarea(attrs={"rows": 2, "cols": 40}),
            "reply": forms.Textarea(attrs={"rows": 2, "cols": 50}),
        }
        return super().get_formset(request, obj, **kwargs)


class DatasetBuildForm(forms.ModelForm):
    """An archetype and a task: the next version of that dataset is built on save."""

    class Meta:
        model = Dataset
        fields = ["archetype", "task"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        archetype, task = cleaned.get("archetype"), cleaned.get("task")
        if archetype is not None and task:
            try:
                dataset_check(archetype=archetype, task=task)
            except DatasetError as exc:
                raise ValidationError(str(exc)) from None
        return cleaned


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["archetype", "task", "version", "train_examples", "heldout_examples", "created_at"]
    list_filter = ["task", "archetype"]
    readonly_fields = [
        "archetype", "task", "version", "path", "train_examples", "heldout_examples", "provenance",
        "manifest_sha256", "created_at",
    ]  # fmt: skip
    actions = ["train"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = DatasetBuildForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else ["archetype", "task"]

    def save_model(self, request: HttpRequest, obj: Dataset, form: Any, change: bool) -> None:
        built = dataset_build(archetype=obj.archetype, task=obj.task)  # writes the files, then the row
        obj.pk, obj.version = built.pk, built.version

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a dataset is immutable: build a new version

    @admin.display(description="where the examples come from")
    def provenance(self, dataset: Dataset) -> str:
        return ", ".join(
            f"{source} {count}" for source, count in sorted(dataset.manifest.get("provenance", {}).items())
        )

    @admin.action(description="Train an adapter on the selected datasets", permissions=["train"])
    def train(self, request: HttpRequest, queryset: QuerySet[Dataset]) -> None:
        for dataset in queryset:
            try:
                job = training_job_start(dataset=dataset, created_by=request.user)
            except TrainingJobError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            self.message_user(request, f"Training job {job.pk} queued for {dataset}.", messages.SUCCESS)

    def has_train_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.add_trainingjob")


@admin.register(TrainingJob)
class TrainingJobAdmin(JobAdminMixin, admin.ModelAdmin):
    """Training runs: a live progress bar, the loss plot, the log; cancel from the job's page."""

    list_display = ["pk", "dataset", "status", "progress", "step", "steps", "adapter", "created_at"]
    list_filter = ["status"]
    readonly_fields = [field.name for field in TrainingJob._meta.fields if field.name != "losses"]
    exclude = ["losses"]
    change_form_template = "admin/training/trainingjob/change_form.html"
    job_status_template = "admin/training/trainingjob/_status.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # started from a dataset (the Datasets list's action)

    def job_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [path("<int:pk>/cancel/", wrap(self.cancel_view), name="training_trainingjob_cancel")]

    def job_status_context(self, request: HttpRequest, job: TrainingJob) -> dict[str, Any]:
        return {
            "plot": loss_plot_svg(job.losses, total_steps=job.steps),
            "may_cancel": job.status not in JOB_ENDED
            and request.user.has_perm("training.change_trainingjob"),
        }

    def cancel_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST" or not request.user.has_perm("training.change_trainingjob"):
            raise PermissionDenied
        job = training_job_cancel(get_object_or_404(TrainingJob, pk=pk))
        self.message_user(
            request, f"Training job {job.pk}: {job.get_status_display().lower()}, cancel requested."
        )
        return HttpResponseRedirect(reverse("admin:training_trainingjob_change", args=[job.pk]))


def eval_run_verdict(run: EvalRun) -> str:
    """The run's verdict in words, for its page and the adapter's."""
    if run.passed is None:
        return "failed before a verdict" if run.status == JobStatus.FAILED else "not judged yet"
    if not run.passed:
        return "did not pass"
    return "passed — promoted" if run.promoted else "passed"


def _summary_rows(run: EvalRun) -> list[dict[str, Any]]:
    """evaluation_summary's rows, each with `met`: whether the candidate met that row's gate
    (None where the metric is not gated), judged by the verdict's own per-metric check (the
    minimum, and no worse than the baseline)."""
    rows = []
    for row in evaluation_summary(run):
        met = None
        if row["gate"] is not None:
            met, _ = gate_metric_check(row["metric"], row["candidate"], row["gate"], row["baseline"])
        rows.append({**row, "met": met})
    return rows


@admin.register(EvalRun)
class EvalRunAdmin(JobAdminMixin, admin.ModelAdmin):
    """Evaluations (started from the adapters list, or by training): followed live, then the
    candidate's metrics beside the baseline's, the gate, its reasons and sample answers."""

    list_display = ["created_at", "adapter", "baseline", "status", "passed", "promoted"]
    list_filter = ["status", "passed", "promoted"]
    list_select_related = ["adapter__archetype", "adapter__subfaction", "adapter__npc"]
    # Metrics, gate, reasons, samples, log and error are laid out by the change form's status
    # fragment (they change while the run goes on); the plain fields are the ones that do not.
    fields = readonly_fields = (
        "adapter", "baseline", "created_by", "created_at", "started_at", "finished_at",
    )  # fmt: skip
    change_form_template = "admin/training/evalrun/change_form.html"
    job_status_template = "admin/training/evalrun/_status.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs come from the adapters list's action, or from training

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a run is a record: evaluate again for a new one

    def job_status_context(self, request: HttpRequest, job: EvalRun) -> dict[str, Any]:
        return {"rows": _summary_rows(job), "verdict": eval_run_verdict(job)}


@admin.register(TranscriptApproval)
class TranscriptApprovalAdmin(admin.ModelAdmin):
    """Turns designers approved for training (from the memory archive's action)."""

    list_display = ["approved_at", "archetype", "turn", "approved_by"]
    list_filter = ["archetype"]
    readonly_fields = ["event", "archetype", "approved_by", "approved_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="turn")
    def turn(self, approval: TranscriptApproval) -> str:
        payload = approval.event.payload
        return f"{payload.get('player', '')[:60]} → {payload.get('npc', '')[:80]}"


def provision_from_admin(request: HttpRequest, archetype: Archetype) -> ProvisionRun | None:
    """Start an archetype's provisioning for the archetype pages; a refusal becomes a message."""
    try:
        run = provision_start(archetype=archetype, created_by=request.user)
    except ProvisionError as exc:
        messages.error(request, str(exc))
        return None
    messages.success(
        request,
        f"Provisioning {archetype.slug}: dataset, training, eval and promotion for "
        f"{', '.join(step['task'] for step in run.plan)}. Its NPCs use the base model until then.",
    )
    return run


@admin.register(ProvisionRun)
class ProvisionRunAdmin(JobAdminMixin, admin.ModelAdmin):
    """One-click provisioning runs (started from an archetype's page): each task's dataset,
    training job and eval, followed live."""

    list_display = ["pk", "archetype", "status", "progress", "created_at", "finished_at"]
    list_filter = ["status"]
    list_select_related = ["archetype"]
    fields = readonly_fields = ("archetype", "created_by", "created_at", "started_at", "finished_at")
    change_form_template = "admin/training/provisionrun/change_form.html"
    job_status_template = "admin/training/provisionrun/_status.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # started from the archetype's page

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record; the jobs it started have their own pages

    def job_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [path("start/<int:archetype_pk>/", wrap(self.start_view), name="training_provisionrun_start")]

    def start_view(self, request: HttpRequest, archetype_pk: int) -> HttpResponse:
        if request.method != "POST" or not request.user.has_perm("training.add_provisionrun"):
            raise PermissionDenied
        archetype = get_object_or_404(Archetype, pk=archetype_pk)
        run = provision_from_admin(request, archetype)
        if run is None:
            return HttpResponseRedirect(reverse("admin:console_archetype_change", args=[archetype.pk]))
        return HttpResponseRedirect(reverse("admin:training_provisionrun_change", args=[run.pk]))
