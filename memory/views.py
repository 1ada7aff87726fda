"""The warm memory pages: what NPCs remember of each player in Redis, and the facts designers
make public. Admin views: memory.admin.MemoryEventAdmin.get_urls wraps them in
`admin_view` (staff login, CSRF) under /admin/memory/memoryevent/warm/.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from redis import Redis

from console.redis_clients import redis_sync
from memory.pairs import iso_utc
from memory.selectors import (
    NPCS_PAGE,
    memory_npcs,
    pair_rejections,
    public_facts,
    warm_pair,
    warm_players_page,
)
from memory.services import FactNotRemembered, public_fact_publish, public_fact_unpublish

VIEW_PERMISSION = "memory.view_memoryevent"
PUBLISH_PERMISSION = "memory.publish_memoryevent"
# What a form may send: player ids are at most 64 characters (MemoryEvent.player_id), and no
# fact the tiers store is near this long.
FACT_MAX_CHARS = 2000


class PublishForm(forms.Form):
    player = forms.CharField(max_length=64, strip=False)
    fact = forms.CharField(max_length=FACT_MAX_CHARS, strip=False)  # matched exactly in Redis


class UnpublishForm(forms.Form):
    fact = forms.CharField(max_length=FACT_MAX_CHARS, strip=False)
    player = forms.CharField(max_length=64, strip=False, required=False)  # the page to go back to


def _redis() -> Redis:
    return redis_sync()


def _may_view(request: HttpRequest) -> None:
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied


def _may_publish(request: HttpRequest) -> None:
    if not request.user.has_perm(PUBLISH_PERMISSION):
        raise PermissionDenied


def _npc_checked(npc: str) -> str:
    # Slugs hold no colon; one here would read another NPC's keys' tail as this NPC's.
    if ":" in npc:
        raise Http404("not an NPC slug")
    return npc


def _pair_url(npc: str, player: str) -> str:
    return reverse("admin:memory_warm_pair", args=[npc]) + "?" + urlencode({"player": player})


def _context(request: HttpRequest, title: str, **values: object) -> dict[str, object]:
    return {
        **admin.site.each_context(request),
        "title": title,
        "hot_ttl_min": settings.MEMORY_HOT_TTL_S // 60,
        "warm_days": settings.MEMORY_WARM_TTL_S // 86400,
        "prompt_facts": settings.MEMORY_FACTS,
        "may_publish": request.user.has_perm(PUBLISH_PERMISSION),
        **values,
    }


@require_GET
def warm_npcs(request: HttpRequest) -> HttpResponse:
    """Pick an NPC: every NPC of the console, by name, NPCS_PAGE a page."""
    _may_view(request)
    query = request.GET.get("q", "").strip()[:64]
    page = Paginator(memory_npcs(query=query), NPCS_PAGE).get_page(request.GET.get("page"))
    return render(
        request, "memory/warm_npcs.html", _context(request, "NPC memory in Redis", page=page, query=query)
    )


@require_GET
def warm_npc(request: HttpRequest, npc: str) -> HttpResponse:
    """The players an NPC remembers (a SCAN page) and its public facts."""
    _may_view(request)
    npc = _npc_checked(npc)
    try:
        cursor = max(0, int(request.GET.get("cursor", "0")))
    except ValueError:
        cursor = 0
    with _redis() as redis:
        players = warm_players_page(redis=redis, npc=npc, cursor=cursor)
        shared = public_facts(redis=redis, npc=npc)
    rows = [(row, _pair_url(npc, row.player)) for row in players.players]
    return render(
        request,
        "memory/warm_npc.html",
        _context(
            request,
            f"What {npc} remembers",
            npc=npc,
            rows=rows,
            next_cursor=players.next_cursor,
            first_page=cursor == 0,
            public_facts=shared,
        ),
    )


@require_GET
def warm_pair_view(request: HttpRequest, npc: str) -> HttpResponse:
    """Everything Redis holds of one pair, with a link to its archived events."""
    _may_view(request)
    npc = _npc_checked(npc)
    player = request.GET.get("player", "")
    if not player or len(player) > 64:
        raise Http404("which player?")
    with _redis() as redis:
        pair = warm_pair(redis=redis, npc=npc, player=player)
        rejections = pair_rejections(redis=redis, npc=npc, player=player)
    archive_url = (
        reverse("admin:memory_memoryevent_changelist")
        + "?"
        + urlencode({"npc_slug": npc, "player_id": player})
    )
    expires_at = None if pair.expires_in_s is None else timezone.now() + timedelta(seconds=pair.expires_in_s)
    return render(
        request,
        "memory/warm_pair.html",
        _context(
            request,
            f"What {npc} remembers of {player}",
            pair=pair,
            rejections=rejections,
            card_rows=_card_rows(pair.relationship),
            expires_at=expires_at,
            archive_url=archive_url,
        ),
    )


CARD_ORDER = ("turns", "trust", "affinity", "first_met", "last_seen", "gifts", "promises", "betrayals")


def _card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """The relationship card as (field, text) rows, the card's usual fields first."""
    names = [name for name in CARD_ORDER if name in card] + sorted(set(card) - set(CARD_ORDER))
    rows = []
    for name in names:
        value = card[name]
        if isinstance(value, list):
            text = "; ".join(map(str, value))
        elif name == "consolidated_at" and str(value).replace(".", "", 1).isdigit():
            text = iso_utc(float(value))  # epoch seconds of the last consolidated turn
        else:
            text = str(value)
        rows.append((name.replace("_", " "), text))
    return rows


@require_POST
def fact_publish(request: HttpRequest, npc: str) -> HttpResponse:
    _may_publish(request)
    npc = _npc_checked(npc)
    form = PublishForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Nothing published: the form was incomplete.")
        return HttpResponseRedirect(reverse("admin:memory_warm_npc", args=[npc]))
    player, fact = form.cleaned_data["player"], form.cleaned_data["fact"]
    try:
        with _redis() as redis:
            importance = public_fact_publish(
                redis=redis, npc=npc, player=player, fact=fact, actor=request.user.get_username()
            )
    except FactNotRemembered as exc:
        messages.error(request, f"Nothing published: {exc}.")
    else:
        messages.success(
            request,
            f"Every player's prompt now includes this fact (importance {importance:g}). Players talking "
            f"to {npc} right now get it when their memory is next loaded from Redis.",
        )
    return HttpResponseRedirect(_pair_url(npc, player))


@require_POST
def fact_unpublish(request: HttpRequest, npc: str) -> HttpResponse:
    _may_publish(request)
    npc = _npc_checked(npc)
    form = UnpublishForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Nothing changed: the form was incomplete.")
    else:
        with _redis() as redis:
            removed = public_fact_unpublish(
                redis=redis, npc=npc, fact=form.cleaned_data["fact"], actor=request.user.get_username()
            )
        if removed:
            messages.success(request, "The fact is no longer shared with every player.")
        else:
            messages.warning(request, "That fact was not public.")
        player = form.cleaned_data["player"]
        if player:
            return HttpResponseRedirect(_pair_url(npc, player))
    return HttpResponseRedirect(reverse("admin:memory_warm_npc", args=[npc]))
