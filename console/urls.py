from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from console.health import HealthView
from console.views import lore_search_api, lore_search_page, metrics, playtest

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("playtest/", playtest, name="playtest"),
    path("lore/search/", lore_search_page, name="lore-search"),
    path("api/lore/search", lore_search_api, name="lore-search-api"),
    path("health/", HealthView.as_view(), name="health"),
    path("metrics", metrics, name="metrics"),
]
