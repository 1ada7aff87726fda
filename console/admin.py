"""Admin pages for designers and ops. Permissions come from the groups in console/permissions.py."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from simple_history.admin import SimpleHistoryAdmin

from console.jobs.admin import JobAdminMixin
from console.lore.files import LoreFileError
from console.lore.ingest import ingest_job_start, lore_upload_check
from console.lore.packs import lore_packs_drop
from console.models import (
    NPC,
    Adapter,
    AdapterScope,
    AdapterStatus,
    Archetype,
    BaseModel,
    Concept,
    ConceptRelation,
    GameClientKey,
    GameKeyScope,
    IngestJob,
    LoreChunk,
    LoreDocument,
    LoreDocumentVersion,
    LoreEvent,
    Region,
    Subfaction,
    World,
)
from console.models.adapters import MAX_ADAPTER_RANK
from console.services.adapters import AdapterRollbackRefused, adapter_rollback, adapter_status_set
from console.services.keys import game_key_create, game_key_revoke
from inference.tasks import residency_sync_enqueue
from training.admin import ExampleExchangeInline, eval_run_verdict, provision_from_admin
from training.composition import CompositionError, adapter_compose
from training.eval.harness import EvalError, eval_run_start
from training.models import EvalRun, ProvisionRun

admin.site.site_header = "Revenant console"
admin.site.site_title = "Revenant"
admin.site.index_title = "World, archetypes and NPCs"


class PrettyJSONField(forms.JSONField):
    """Shows JSON indented, one item a line, so designers can edit lists of actions and barks."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)


FORMFIELD_OVERRIDES: dict[type[models.Field[Any, Any]], dict[str, Any]] = {
    models.JSONField: {
        "form_class": PrettyJSONField,
        "widget": forms.Textarea(attrs={"rows": 10, "cols": 90}),
    },
    # Django 6's default already: a bare host typed into a service URL means https.
    models.URLField: {"assume_scheme": "https"},
}


class RegionInline(admin.TabularInline):
    model = Region
    extra = 0
    fields = ["slug", "name", "description"]


@admin.register(World)
class WorldAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "updated_at"]
    search_fields = ["name", "slug"]
    inlines = [RegionInline]


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "world"]
    list_filter = ["world"]
    search_fields = ["name", "slug"]
    list_select_related = ["world"]


class SubfactionInline(admin.StackedInline):
    model = Subfaction
    extra = 0
    fields = ["slug", "name", "persona_overrides", "speech_style_overrides", "trait_overrides"]
    formfield_overrides = FORMFIELD_OVERRIDES


@admin.register(Archetype)
class ArchetypeAdmin(SimpleHistoryAdmin):
    list_display = ["name", "slug", "world", "base_model", "updated_at"]
    list_filter = ["world", "base_model"]
    search_fields = ["name", "slug", "persona"]
    list_select_related = ["world", "base_model"]
    formfield_overrides = FORMFIELD_OVERRIDES
    inlines = [SubfactionInline, ExampleExchangeInline]
    # "Provision adapters": one button (and a list action) for dataset → training → eval → promotion.
    change_form_template = "admin/console/archetype/change_form.html"
    actions = ["provision"]
    fieldsets = [
        (None, {"fields": ["world", "slug", "name", "base_model"]}),
        ("Voice and character", {"fields": ["persona", "speech_style", "personality_traits", "lexicon"]}),
        ("What it may do and feel", {"fields": ["allowed_actions", "emotions", "barks", "content_policy"]}),
        (
            "External services",
            {
                "fields": ["voice_service_url", "facial_service_url", "body_service_url"],
                "description": (
                    "Voice, face and body animation run outside Revenant; these are their addresses."
                ),
            },
        ),
    ]

    @admin.action(
        description="Provision adapters (dataset, training, eval, promotion)", permissions=["provision"]
    )
    def provision(self, request: HttpRequest, queryset: QuerySet[Archetype]) -> None:
        for archetype in queryset:
            provision_from_admin(request, archetype)

    def has_provision_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.add_provisionrun")

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        runs = ProvisionRun.objects.filter(archetype_id=object_id).order_by("-created_at")[:1]
        context = {"may_provision": self.has_provision_permission(request), "provision_run": runs.first()}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **context})


@admin.register(Subfaction)
class SubfactionAdmin(SimpleHistoryAdmin):
    list_display = ["name", "slug", "archetype"]
    list_filter = ["archetype"]
    search_fields = ["name", "slug"]
    list_select_related = ["archetype"]
    formfield_overrides = FORMFIELD_OVERRIDES


@admin.register(NPC)
class NPCAdmin(SimpleHistoryAdmin):
    list_display = ["name", "slug", "archetype", "subfaction", "region", "status"]
    list_filter = ["archetype", "region", "status"]
    search_fields = ["name", "slug", "backstory"]
    list_select_related = ["archetype", "subfaction__archetype", "region__world"]
    autocomplete_fields = ["archetype", "subfaction", "region"]
    formfield_overrides = FORMFIELD_OVERRIDES
    fieldsets = [
        (None, {"fields": ["slug", "name", "archetype", "subfaction", "region", "status"]}),
        ("Character", {"fields": ["backstory", "personality_overrides", "quest_flags"]}),
        ("Position (metres)", {"fields": [("position_x", "position_y", "position_z")]}),
    ]


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ["name", "parameter_count", "dtype", "quantization", "context_length"]
    search_fields = ["name", "path"]


class AdapterComposeForm(forms.Form):
    """The Compose action's page: a weight per selected adapter, an optional SVD rank, activate."""

    svd_rank = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_ADAPTER_RANK, label="SVD rank",
        help_text="Leave empty for the exact sum (its rank is the sum of the ranks); give one to approximate "
        "the sum at that rank when the sum is more than the workers serve.",
    )  # fmt: skip
    activate = forms.BooleanField(
        required=False, help_text="Make the result the active adapter of its target (retires the old)."
    )

    def __init__(self, *args: Any, adapters: list[Adapter], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapters = adapters
        for adapter in adapters:
            self.fields[f"weight_{adapter.pk}"] = forms.FloatField(
                initial=1.0, label=f"Weight of {adapter} (rank {adapter.rank})"
            )
        # The weights first: they are what a designer sets on this page.
        self.order_fields([f"weight_{adapter.pk}" for adapter in adapters])

    def components(self) -> list[tuple[Adapter, float]]:
        return [(adapter, self.cleaned_data[f"weight_{adapter.pk}"]) for adapter in self.adapters]


# Archetype first: the order a reader builds a composition in (base, then deltas).
SCOPE_ORDER = {AdapterScope.ARCHETYPE: 0, AdapterScope.SUBFACTION: 1, AdapterScope.NPC: 2}


# Fields of an adapter no admin edit changes once it exists (the actions and training do).
ADAPTER_FIXED_FIELDS = [
    "scope", "archetype", "subfaction", "npc", "task", "version", "rank", "alpha", "artifact_path", "sha256",
    "size_bytes", "base_model", "status", "eval_metrics",
]  # fmt: skip


@admin.register(Adapter)
class AdapterAdmin(SimpleHistoryAdmin):
    list_display = ["__str__", "scope", "task", "version", "rank", "status", "base_model", "updated_at"]
    list_filter = ["status", "task", "scope", "archetype", "base_model"]
    search_fields = ["archetype__slug", "subfaction__slug", "npc__slug", "artifact_path", "sha256"]
    list_select_related = ["archetype", "subfaction", "npc", "base_model"]
    autocomplete_fields = ["archetype", "subfaction", "npc"]
    formfield_overrides = FORMFIELD_OVERRIDES
    readonly_fields = ["latest_eval", "composition", "created_at", "updated_at"]
    actions = [
        "activate_adapters", "retire_adapters", "evaluate_adapters", "rollback_adapters", "compose_adapters"
    ]  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # An evaluation judged one artifact for one target: pointing the row at other files, at
        # another target, or setting its status by hand would serve what no gate measured. Status
        # changes go through the actions (adapter_status_set checks the artifact and keeps one
        # active per target); a new artifact comes from training (adapter_import).
        if obj is None:
            return [*self.readonly_fields, "status", "eval_metrics"]
        return [*self.readonly_fields, *ADAPTER_FIXED_FIELDS]

    def revert_disabled(self, request: HttpRequest, obj: Any = None) -> bool:
        return True  # a revert would restore an old artifact and status (see save_model)

    def save_model(self, request: HttpRequest, obj: Adapter, form: forms.ModelForm, change: bool) -> None:
        if change:
            # The history page's revert saves the historical row whole, read-only fields included:
            # keep the stored values of every field an edit may not change.
            columns = [
                field.attname for field in Adapter._meta.concrete_fields if field.name in ADAPTER_FIXED_FIELDS
            ]
            stored = Adapter.objects.filter(pk=obj.pk).values(*columns).get()
            for name, value in stored.items():
                setattr(obj, name, value)
        super().save_model(request, obj, form, change)
        if not change:
            residency_sync_enqueue()

    @admin.action(
        description="Activate the selected adapters (and load them into their workers)",
        permissions=["change"],
    )
    def activate_adapters(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> None:
        self._status_set(request, queryset, AdapterStatus.ACTIVE)

    @admin.action(
        description="Retire the selected adapters (and unload them from their workers)",
        permissions=["change"],
    )
    def retire_adapters(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> None:
        self._status_set(request, queryset, AdapterStatus.RETIRED)

    @admin.action(
        description="Evaluate against the baseline (promote if it passes its gate)", permissions=["evaluate"]
    )
    def evaluate_adapters(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> None:
        queued = []
        for adapter in queryset:
            try:
                run = eval_run_start(adapter=adapter, created_by=request.user)
            except EvalError as exc:
                self.message_user(request, str(exc), messages.WARNING)
                continue
            queued.append(run)
        if queued:
            links = format_html_join(
                ", ",
                '<a href="{}">{}</a>',
                (
                    (reverse("admin:training_evalrun_change", args=[run.pk]), str(run.adapter))
                    for run in queued
                ),
            )
            self.message_user(
                request,
                format_html("{} evaluation(s) queued: {}.", len(queued), links),
                messages.SUCCESS,
            )

    def has_evaluate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.add_evalrun")

    @admin.action(description="Roll back to the adapter this one replaced", permissions=["change"])
    def rollback_adapters(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> None:
        restored = []
        for adapter in queryset:
            try:
                previous = adapter_rollback(adapter)
            except AdapterRollbackRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
            except ValidationError as exc:  # the earlier artifact no longer verifies
                self.message_user(request, f"{adapter}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                restored.append(f"{previous} (rolled back from {adapter})")
        if restored:
            residency_sync_enqueue()
            self.message_user(
                request,
                f"Active again: {', '.join(restored)}; workers are being updated.",
                messages.SUCCESS,
            )

    # Composing makes a new adapter out of trained ones: whoever may train adapters (designers)
    # may compose them; adding an adapter row by hand (console.add_adapter) stays an ops matter.
    def has_compose_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.add_trainingjob")

    @admin.action(description="Compose selected adapters", permissions=["compose"])
    def compose_adapters(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> HttpResponse | None:
        """First the weights page; its submission (marked `apply`) composes and comes back here."""
        adapters = sorted(
            queryset.select_related("archetype", "subfaction__archetype", "npc__archetype", "base_model"),
            key=lambda adapter: (SCOPE_ORDER.get(AdapterScope(adapter.scope), 3), adapter.pk),
        )
        if "apply" in request.POST:
            form = AdapterComposeForm(request.POST, adapters=adapters)
            if form.is_valid():
                activate = form.cleaned_data["activate"]
                try:
                    composed = adapter_compose(
                        components=form.components(),
                        svd_rank=form.cleaned_data["svd_rank"],
                        activate=activate,
                    )
                except CompositionError as exc:
                    form.add_error(None, str(exc))
                else:
                    if activate:
                        residency_sync_enqueue()
                    url = reverse("admin:console_adapter_change", args=[composed.pk])
                    self.message_user(
                        request,
                        format_html(
                            'Composed <a href="{}">{}</a> (rank {}) from {} adapters.',
                            url,
                            composed,
                            composed.rank,
                            len(adapters),
                        ),  # fmt: skip
                        messages.SUCCESS,
                    )
                    return None
        else:
            form = AdapterComposeForm(adapters=adapters)
        context = {
            **self.admin_site.each_context(request),
            "title": "Compose adapters",
            "opts": self.model._meta,
            "form": form,
            "adapters": adapters,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/console/adapter/compose.html", context)

    @admin.display(description="latest evaluation")
    def latest_eval(self, adapter: Adapter) -> str:
        run = EvalRun.objects.filter(adapter=adapter).first() if adapter.pk else None  # newest first
        if run is None:
            return "never evaluated"
        url = reverse("admin:training_evalrun_change", args=[run.pk])
        return format_html(
            '<a href="{}">eval {} against {}: {}</a>', url, run.pk, run.baseline, eval_run_verdict(run)
        )

    def _status_set(self, request: HttpRequest, queryset: QuerySet[Adapter], status: str) -> None:
        changed = []
        for adapter in queryset:
            try:
                adapter_status_set(adapter=adapter, status=status)
            except ValidationError as exc:
                self.message_user(request, f"{adapter}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                changed.append(str(adapter))
        if changed:
            residency_sync_enqueue()
            self.message_user(
                request,
                f"{len(changed)} adapter(s) now {status}; workers are being updated.",
                messages.SUCCESS,
            )


class GameClientKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=GameKeyScope.choices, widget=forms.CheckboxSelectMultiple, help_text="What this key may do."
    )

    class Meta:
        model = GameClientKey
        fields = ["name", "scopes", "active"]


@admin.register(GameClientKey)
class GameClientKeyAdmin(admin.ModelAdmin):
    form = GameClientKeyForm
    list_display = ["name", "prefix", "scopes", "active", "created_at", "last_used_at"]
    list_filter = ["active"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at"]
    actions = ["revoke_keys"]

    def save_model(
        self, request: HttpRequest, obj: GameClientKey, form: forms.ModelForm, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, secret = game_key_create(name=obj.name, scopes=obj.scopes, created_by=request.user)  # type: ignore[arg-type]
        obj.pk, obj.prefix, obj.secret_hash = key.pk, key.prefix, key.secret_hash
        if not obj.active:
            game_key_revoke(key=key)
        obj.shown_once_secret = secret  # type: ignore[attr-defined]  # for response_add, this request only

    def response_add(self, request: HttpRequest, obj: GameClientKey, post_url_continue: Any = None) -> Any:
        """The new secret on this response's page and nowhere else. A message would put it in the
        messages cookie (the default storage tries the cookie first; signed, not encrypted), or
        in the session table with the session storage: copies that outlive the page. The page
        is marked no-store so no browser or proxy cache keeps it either."""
        secret = getattr(obj, "shown_once_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Game key {obj.name}",
            "opts": self.model._meta,
            "key": obj,
            "secret": secret,
        }
        response = TemplateResponse(request, "admin/console/gameclientkey/secret.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[GameClientKey]) -> None:
        for key in queryset:
            game_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


# --- Lore ------------------------------------------------------------------------------


class LoreVersionInline(admin.TabularInline):
    model = LoreDocumentVersion
    fields = ["number", "status", "checksum", "created_at"]
    readonly_fields = ["number", "status", "checksum", "created_at"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # versions come from ingestion


@admin.register(LoreDocument)
class LoreDocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "world", "slug", "source", "chunk_count", "updated_at"]
    list_filter = ["world"]
    search_fields = ["title", "slug", "source"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [LoreVersionInline]

    @admin.display(description="chunks")
    def chunk_count(self, document: LoreDocument) -> int:
        return document.chunks.count()


@admin.register(LoreDocumentVersion)
class LoreDocumentVersionAdmin(admin.ModelAdmin):
    list_display = ["document", "number", "status", "created_at"]
    list_filter = ["status", "document__world"]
    readonly_fields = ["document", "number", "checksum", "status", "text", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(LoreChunk)
class LoreChunkAdmin(admin.ModelAdmin):
    """Passages as search and prompts see them; only their gating conditions are edited here."""

    list_display = ["document", "ordinal", "heading", "tokens"]
    list_filter = ["world", "document"]
    search_fields = ["text", "heading"]
    fields = ["world", "document", "version", "ordinal", "heading", "text", "tokens", "conditions"]
    readonly_fields = ["world", "document", "version", "ordinal", "heading", "text", "tokens"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class ConceptTiesInline(admin.TabularInline):
    model = ConceptRelation
    fk_name = "source"
    fields = ["kind", "target", "weight"]
    readonly_fields = ["kind", "target", "weight"]
    extra = 0
    verbose_name_plural = "mentioned with (ingestion finds these)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Concept)
class ConceptAdmin(admin.ModelAdmin):
    """People, places, factions and items that ingestion found (or a designer added). Correct
    a kind here, or gate a concept: every passage naming it follows its conditions."""

    list_display = ["name", "kind", "world", "passages", "gated"]
    list_filter = ["world", "kind"]
    search_fields = ["name"]
    readonly_fields = ["chunks"]
    inlines = [ConceptTiesInline]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).annotate(passage_count=Count("chunks"))

    @admin.display(description="passages", ordering="passage_count")
    def passages(self, concept: Any) -> int:
        return int(concept.passage_count)

    @admin.display(description="gated", boolean=True)
    def gated(self, concept: Concept) -> bool:
        return bool(concept.conditions)

    def save_model(self, request: HttpRequest, obj: Concept, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if "conditions" in form.changed_data:
            lore_packs_drop(obj.world)  # packs were gated with the old conditions


@admin.register(LoreEvent)
class LoreEventAdmin(admin.ModelAdmin):
    list_display = ["year", "description", "world"]
    list_filter = ["world"]
    search_fields = ["description"]
    readonly_fields = ["world", "year", "description", "concepts", "chunk"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # events come from ingestion


class IngestUploadForm(forms.ModelForm):
    """A lore file (.md/.txt) or a lorebook (.json) for a world, checked before a job exists."""

    class Meta:
        model = IngestJob
        fields = ["world", "upload"]

    def clean_upload(self) -> Any:
        upload = self.cleaned_data["upload"]
        if not upload:
            raise ValidationError("Choose a .md, .txt or .json (lorebook) file.")
        try:
            lore_upload_check(upload.name, upload.size, upload.chunks())
        except LoreFileError as exc:
            raise ValidationError(str(exc)) from None
        return upload


@admin.register(IngestJob)
class IngestJobAdmin(JobAdminMixin, admin.ModelAdmin):
    """Ingestion runs: status, percent, log and error. *Add* uploads a file (a Celery worker
    ingests it); `manage.py ingest` runs folders. A job's page follows it live (htmx)."""

    list_display = [
        "created_at",
        "world",
        "source",
        "status",
        "progress",
        "documents_written",
        "chunks_written",
    ]
    list_filter = ["status", "world"]
    readonly_fields = [field.name for field in IngestJob._meta.fields]
    change_form_template = "admin/console/ingestjob/change_form.html"
    job_status_template = "admin/console/ingestjob/_status.html"
    job_poll_every = "1s"  # an upload of a few files is over in seconds

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = IngestUploadForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return super().get_fields(request, obj) if obj is not None else ["world", "upload"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: IngestJob, form: Any, change: bool) -> None:
        upload = form.cleaned_data["upload"]
        job = ingest_job_start(
            world=obj.world, source=f"upload:{upload.name.rsplit('/', 1)[-1]}", upload=upload,
            created_by=request.user,
        )  # fmt: skip
        obj.pk, obj.source = job.pk, job.source  # the admin's message and redirect name this row
