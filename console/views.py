"""Small HTTP endpoints of the console that are not admin pages."""

from __future__ import annotations

import hmac
from pathlib import Path

from asgiref.sync import async_to_sync
from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, JsonResponse
from django.shortcuts import render
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST
from django_prometheus.exports import ExportToDjangoView

from bridge.auth import PLAYTEST_PERMISSION
from console.capacity import (
    BYTES_PER_WEIGHT,
    PRESETS,
    TierLoad,
    measured_worker_tokens_s,
    memory_plan,
    servers_needed,
)
from console.lore.search import LORE_SEARCH_MAX, lore_search
from console.models import NPC, Archetype, World
from console.plots import line_chart_svg
from console.selectors import ops_snapshot, playtest_npcs
from inference.context import turn_context_build
from inference.sampling import tier_sampling
from memory.events import turn_event_id
from memory.models import MemoryEvent, MemoryEventKind

LORE_VIEW_PERMISSION = "console.view_lorechunk"
LORE_QUERY_MAX_CHARS = 500


class LoreSearchForm(forms.Form):
    q = forms.CharField(label="Query", max_length=LORE_QUERY_MAX_CHARS, strip=True)
    world = forms.ModelChoiceField(queryset=World.objects.all(), to_field_name="slug", empty_label=None)
    archetype = forms.ModelChoiceField(
        queryset=Archetype.objects.all(), to_field_name="slug", required=False,
        empty_label="any (all the lore)", help_text="Only what this archetype may know (lore gating).",
    )  # fmt: skip
    limit = forms.IntegerField(min_value=1, max_value=LORE_SEARCH_MAX, initial=10, required=False)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics; behind a bearer token when METRICS_TOKEN is set."""
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            return HttpResponse("metrics need Authorization: Bearer <METRICS_TOKEN>\n", status=401)
    return ExportToDjangoView(request)


@require_GET
@staff_member_required
@permission_required(PLAYTEST_PERMISSION, raise_exception=True)
def playtest(request: HttpRequest) -> HttpResponse:
    """Chat with an NPC through the game websocket, as a game client would (static/console/playtest.js).

    The socket authenticates with this page's session cookie (bridge.auth), so no game key
    reaches the browser.
    """
    context = {
        **admin.site.each_context(request),
        "title": "Playtest",
        "npcs": playtest_npcs(),
        "player_id": f"playtest-user-{request.user.pk}",
        "max_text_chars": settings.BRIDGE_MAX_TEXT_CHARS,
    }
    return render(request, "console/playtest.html", context)


def _lore_hits(form: LoreSearchForm) -> list[dict[str, object]]:
    data = form.cleaned_data
    archetype = data["archetype"].slug if data["archetype"] else None
    hits = lore_search(world=data["world"], query=data["q"], archetype=archetype, limit=data["limit"] or 10)
    return [hit.__dict__ for hit in hits]


@require_GET
@staff_member_required
@permission_required(LORE_VIEW_PERMISSION, raise_exception=True)
def lore_search_page(request: HttpRequest) -> HttpResponse:
    """Lore search for designers: the chunks nearest a query, with their scores and gating."""
    form = LoreSearchForm(request.GET or None)
    hits = _lore_hits(form) if form.is_valid() else []
    context = {**admin.site.each_context(request), "title": "Lore search", "form": form, "hits": hits}
    return render(request, "console/lore_search.html", context)


@require_GET
@staff_member_required
@permission_required(LORE_VIEW_PERMISSION, raise_exception=True)
def lore_search_api(request: HttpRequest) -> JsonResponse:
    """`GET /api/lore/search?q=…&world=…[&archetype=…][&limit=…]` for tools (session auth):
    {"hits": [{chunk, document, heading, text, score, conditions}]}, or 400 with the errors."""
    form = LoreSearchForm(request.GET)
    if not form.is_valid():
        errors = {field: [str(message) for message in messages] for field, messages in form.errors.items()}
        return JsonResponse({"errors": errors}, status=400)
    return JsonResponse({"hits": _lore_hits(form)})


# --- Ops: the live dashboard and turn traces ---------------------------------------------------

OPS_PERMISSION = "console.watch_region"
TRACE_PERMISSION = "memory.view_memoryevent"
TIER_COLOURS = {"gold": "#b8860b", "silver": "#7a8793", "bronze": "#8c5a2b"}
LATENCY_COLOURS = {"p50": "#1f5fa5", "p95": "#c0392b"}


@require_GET
@staff_member_required
@permission_required(OPS_PERMISSION, raise_exception=True)
def ops_dashboard(request: HttpRequest) -> HttpResponse:
    """The live ops dashboard; its panel (ops_panel) refreshes every 2 s through htmx."""
    context = {**admin.site.each_context(request), "title": "Ops dashboard", **_ops_panel_context()}
    return render(request, "console/ops.html", context)


@require_GET
@staff_member_required
@permission_required(OPS_PERMISSION, raise_exception=True)
def ops_panel(request: HttpRequest) -> HttpResponse:
    return render(request, "console/ops_panel.html", _ops_panel_context())


def _ops_panel_context() -> dict[str, object]:
    snapshot = ops_snapshot()
    for region in snapshot["regions"]:
        region["plot"] = line_chart_svg(
            {tier: [(point["at"], point[tier]) for point in region["history"]] for tier in TIER_COLOURS},
            colours=TIER_COLOURS, label=f"{region['region']} NPCs per tier",
        )  # fmt: skip
    minutes = [(at, p50, p95) for at, count, p50, p95 in snapshot["turns"].per_minute if count]
    snapshot["latency_plot"] = line_chart_svg(
        {"p50": [(at, p50) for at, p50, _ in minutes if p50 is not None],
         "p95": [(at, p95) for at, _, p95 in minutes if p95 is not None]},
        colours=LATENCY_COLOURS, label="turn latency per minute", unit=" ms",
    )  # fmt: skip
    return snapshot


def _turn_event(turn_id: str) -> MemoryEvent | HttpResponseNotFound:
    """The archived turn, or a 404 that says why it may be missing (shown with DEBUG off too)."""
    event = MemoryEvent.objects.filter(event_id=turn_event_id(turn_id), kind=MemoryEventKind.TURN).first()
    if event is None:
        return HttpResponseNotFound(
            f"No archived turn {escape(turn_id)}: a turn is archived a second or two after it ends "
            "(is the archiver running?), and only turns played through the game websocket are.",
            content_type="text/plain",
        )
    return event


@require_GET
@staff_member_required
@permission_required(TRACE_PERMISSION, raise_exception=True)
def turn_trace(request: HttpRequest, turn_id: str) -> HttpResponse:
    """Why did the NPC say that: everything a turn ran with, from its archived event."""
    event = _turn_event(turn_id)
    if isinstance(event, HttpResponse):
        return event
    trace = event.payload.get("trace") or {}
    sections = trace.get("prompt_sections") or {}
    context = {
        **admin.site.each_context(request),
        "title": f"Turn {turn_id}",
        "turn_id": turn_id,
        "event": event,
        "trace": trace,
        "sections": sorted(sections.items(), key=lambda item: -item[1]),
        "section_total": sum(sections.values()),
        "may_replay": request.user.has_perm(PLAYTEST_PERMISSION) and bool(trace.get("messages")),
    }
    return render(request, "console/turn_trace.html", context)


@require_POST
@staff_member_required
# The replay page shows the archived turn (what the player said, the prompt): the trace page's
# permission, and the playtest one because it runs a turn on a worker.
@permission_required([TRACE_PERMISSION, PLAYTEST_PERMISSION], raise_exception=True)
def turn_trace_replay(request: HttpRequest, turn_id: str) -> HttpResponse:
    """The traced prompt again, greedily, on the NPC's current adapters (an htmx fragment)."""
    # Imported here: the turn pipeline loads the OpenAI client, and the URL checks import this
    # module in every management command (the archiver must start fast).
    from inference.turn.replay import turn_replay

    event = _turn_event(turn_id)
    if isinstance(event, HttpResponse):
        return event
    trace = event.payload.get("trace") or {}
    if not trace.get("messages"):
        return HttpResponse("This turn kept no prompt: it cannot be replayed.", status=400)
    try:
        # Read now, not from the turn path's cache: the replay is against today's adapters.
        context = turn_context_build(npc_slug=event.npc_slug)
    except NPC.DoesNotExist:
        return HttpResponse(f"NPC {escape(event.npc_slug)} no longer exists.", status=404)
    player_text = str(event.payload.get("player") or "")
    replay = async_to_sync(turn_replay)(context=context, trace=trace, player_text=player_text)
    return render(request, "console/turn_replay.html", {"replay": replay, "then": event.payload})


# --- The capacity planner ------------------------------------------------------------------------


class CapacityForm(forms.Form):
    model = forms.ChoiceField(
        choices=[(key, shape.name) for key, shape in PRESETS.items()], initial="llama-3-8b"
    )
    quantization = forms.ChoiceField(choices=[(name, name) for name in BYTES_PER_WEIGHT], initial="fp16")
    gpu_gb = forms.FloatField(label="GPU memory (GB)", min_value=1, max_value=1000, initial=80)
    adapters = forms.IntegerField(label="Resident adapters", min_value=0, max_value=1000, initial=32)
    rank = forms.IntegerField(label="Adapter rank", min_value=1, max_value=256, initial=8)
    targets = forms.IntegerField(label="Targets per layer", min_value=1, max_value=8, initial=4,
                                 help_text="q, k, v and o projections: 4")  # fmt: skip
    context = forms.IntegerField(label="Context (tokens)", min_value=256, max_value=131072, initial=2048)
    sequences = forms.IntegerField(label="Concurrent sequences", min_value=1, max_value=4096, initial=64)
    kv_bytes = forms.FloatField(label="Bytes per KV value", min_value=0.5, max_value=4, initial=2,
                                help_text="2 for fp16, 1 for an fp8 KV cache")  # fmt: skip
    overhead_gb = forms.FloatField(label="Engine overhead (GB)", min_value=0, max_value=100, initial=2)
    gold_npcs = forms.IntegerField(min_value=0, max_value=1_000_000, initial=200)
    gold_turns_per_minute = forms.FloatField(min_value=0, max_value=60, initial=2)
    silver_npcs = forms.IntegerField(min_value=0, max_value=1_000_000, initial=400)
    silver_turns_per_minute = forms.FloatField(min_value=0, max_value=60, initial=1)
    worker_tokens_s = forms.FloatField(
        label="Measured tokens/s per worker", min_value=0.1, required=False,
        help_text="Empty: this machine's bench.multilora figure (many adapters at once).",
    )  # fmt: skip


@require_GET
@staff_member_required
@permission_required(OPS_PERMISSION, raise_exception=True)
def capacity_planner(request: HttpRequest) -> HttpResponse:
    """GPU memory per worker and servers per world, with the formulas (console.capacity)."""
    form = CapacityForm(request.GET or None)
    data = (
        form.cleaned_data
        if form.is_bound and form.is_valid()
        else {name: field.initial for name, field in form.fields.items()}
    )
    measured, measured_source = measured_worker_tokens_s(Path(settings.BENCH_DIR))
    context: dict[str, object] = {
        **admin.site.each_context(request), "title": "Capacity planner", "form": form,
        "measured_source": measured_source,
    }  # fmt: skip
    if not form.is_bound or form.is_valid():
        shape = PRESETS[data["model"]]
        context["memory"] = memory_plan(
            shape, quantization=data["quantization"], adapters=data["adapters"], rank=data["rank"],
            targets=data["targets"], context=data["context"], sequences=data["sequences"],
            kv_bytes=data["kv_bytes"], overhead_gb=data["overhead_gb"], gpu_gb=data["gpu_gb"],
        )  # fmt: skip
        context["shape"] = shape
        tokens_s = data.get("worker_tokens_s") or measured
        if tokens_s:
            sampling = {tier: tier_tokens(tier) for tier in ("gold", "silver")}
            context["servers"] = servers_needed(
                [TierLoad(tier, data[f"{tier}_npcs"], data[f"{tier}_turns_per_minute"], sampling[tier])
                 for tier in ("gold", "silver")],
                worker_tokens_s=tokens_s,
            )  # fmt: skip
    return render(request, "console/capacity.html", context)


def tier_tokens(tier: str) -> int:
    """The most tokens a turn of the tier generates (inference.sampling.tier_sampling)."""
    return tier_sampling(tier).max_tokens
