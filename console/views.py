"""Small HTTP endpoints of the console that are not admin pages."""

from __future__ import annotations

import hmac

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django_prometheus.exports import ExportToDjangoView

from bridge.auth import PLAYTEST_PERMISSION
from console.models import Archetype, World
from console.selectors import LORE_SEARCH_MAX, lore_search, playtest_npcs

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
