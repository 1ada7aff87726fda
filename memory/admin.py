from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from console.redis_clients import redis_sync
from memory import views
from memory.models import ForgottenPlayer, MemoryEvent
from memory.services import player_forget
from training.transcripts import transcripts_approve


@admin.register(MemoryEvent)
class MemoryEventAdmin(admin.ModelAdmin):
    """The lifetime archive: append-only, written by the archiver, read here. Its changelist
    links to the warm memory pages (templates/admin/memory/memoryevent/change_list.html)."""

    list_display = ["occurred_at", "kind", "npc_slug", "player_id", "summary", "trace_link"]
    list_filter = ["kind", "npc_slug"]
    search_fields = ["=player_id", "=npc_slug", "=session_id"]
    date_hierarchy = "occurred_at"
    list_per_page = 50
    actions = ["forget_players", "approve_for_training"]
    readonly_fields = [*(field.name for field in MemoryEvent._meta.fields), "trace_link"]

    def get_urls(self) -> list[URLPattern]:
        """The warm memory pages (memory.views), before the changelist's `<object_id>/` catch-all."""
        wrap = self.admin_site.admin_view
        warm = [
            path("warm/", wrap(views.warm_npcs), name="memory_warm_npcs"),
            path("warm/<str:npc>/", wrap(views.warm_npc), name="memory_warm_npc"),
            path("warm/<str:npc>/player/", wrap(views.warm_pair_view), name="memory_warm_pair"),
            path("warm/<str:npc>/publish/", wrap(views.fact_publish), name="memory_fact_publish"),
            path("warm/<str:npc>/unpublish/", wrap(views.fact_unpublish), name="memory_fact_unpublish"),
        ]
        return warm + super().get_urls()

    @admin.display(description="what happened")
    def summary(self, event: MemoryEvent) -> str:
        payload = event.payload
        if event.kind == "turn":
            return f"{payload.get('player', '')[:60]} → {payload.get('npc', '')[:80]}"
        return str(payload.get("text") or payload)[:140]

    @admin.display(description="trace")
    def trace_link(self, event: MemoryEvent) -> str:
        """A turn played through the game websocket opens on its trace page (why it said that)."""
        turn_id = (event.payload.get("trace") or {}).get("turn_id") if event.kind == "turn" else None
        if not turn_id:
            return "–"
        return format_html('<a href="{}">why?</a>', reverse("turn-trace", args=[turn_id]))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Forget the players of the selected events (all tiers)", permissions=["delete"])
    def forget_players(self, request: HttpRequest, queryset: QuerySet[MemoryEvent]) -> None:
        redis = redis_sync()
        for player in sorted(set(queryset.values_list("player_id", flat=True))):
            report = player_forget(redis=redis, player=player)
            self.message_user(
                request,
                f"Forgot {player}: {report.archived_events} archived events, {report.redis_keys} Redis keys.",
                messages.SUCCESS,
            )

    @admin.action(description="Approve the selected turns for training", permissions=["approve"])
    def approve_for_training(self, request: HttpRequest, queryset: QuerySet[MemoryEvent]) -> None:
        approved = transcripts_approve(events=queryset, approved_by=request.user)
        self.message_user(
            request, f"{approved} turns approved for their archetypes' next datasets.", messages.SUCCESS
        )

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.add_transcriptapproval")


@admin.register(ForgottenPlayer)
class ForgottenPlayerAdmin(admin.ModelAdmin):
    list_display = ["player_id", "forgotten_at"]
    search_fields = ["=player_id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
