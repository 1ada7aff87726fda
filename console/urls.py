from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from console.health import HealthView
from console.views import (
    capacity_planner,
    lore_search_api,
    lore_search_page,
    metrics,
    ops_dashboard,
    ops_panel,
    playtest,
    turn_trace,
    turn_trace_replay,
)

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("playtest/", playtest, name="playtest"),
    path("lore/search/", lore_search_page, name="lore-search"),
    path("api/lore/search", lore_search_api, name="lore-search-api"),
    path("ops/", ops_dashboard, name="ops-dashboard"),
    path("ops/panel/", ops_panel, name="ops-panel"),
    path("ops/capacity/", capacity_planner, name="capacity-planner"),
    path("ops/turns/<str:turn_id>/", turn_trace, name="turn-trace"),
    path("ops/turns/<str:turn_id>/replay/", turn_trace_replay, name="turn-trace-replay"),
    path("health/", HealthView.as_view(), name="health"),
    path("metrics", metrics, name="metrics"),
]
