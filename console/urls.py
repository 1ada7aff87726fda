from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from console.health import HealthView
from console.views import metrics, playtest

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("playtest/", playtest, name="playtest"),
    path("health/", HealthView.as_view(), name="health"),
    path("metrics", metrics, name="metrics"),
]
