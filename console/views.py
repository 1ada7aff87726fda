"""Small HTTP endpoints of the console that are not admin pages."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django_prometheus.exports import ExportToDjangoView

from bridge.auth import PLAYTEST_PERMISSION
from console.selectors import playtest_npcs


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
