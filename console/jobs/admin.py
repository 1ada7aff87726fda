"""The admin side of every long job: its page shows the row's status, progress and log in an
htmx fragment that polls until the job ends (console.jobs)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import path

from console.jobs.models import Job


class JobAdminMixin(admin.ModelAdmin):
    """Adds `<pk>/status/` (URL name `<app>_<model>_status`) and the status context to the
    change form. A kind sets `job_status_template` (a template that extends
    `admin/jobs/_status.html` and fills its `summary` and `details` blocks) and may add to
    the context with `job_status_context`."""

    job_status_template = "admin/jobs/_status.html"
    job_poll_every = "2s"  # the htmx trigger: how often an open page asks again

    def job_status_context(self, request: HttpRequest, job: Any) -> dict[str, Any]:
        """What a kind's fragment needs beyond the row (a plot, a verdict)."""
        return {}

    def job_context(self, request: HttpRequest, job: Job) -> dict[str, Any]:
        opts = self.model._meta
        return {
            "job": job,
            "done": job.ended,
            "status_url": f"admin:{opts.app_label}_{opts.model_name}_status",
            "poll_every": self.job_poll_every,
            "job_status_template": self.job_status_template,
            **self.job_status_context(request, job),
        }

    def get_urls(self) -> list[Any]:
        opts = self.model._meta
        status = path(
            "<int:pk>/status/",
            self.admin_site.admin_view(self.status_view),
            name=f"{opts.app_label}_{opts.model_name}_status",
        )
        return [status, *self.job_urls(), *super().get_urls()]

    def job_urls(self) -> list[Any]:
        """A kind's own views (cancel, start), before the admin's catch-all object URLs."""
        return []

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        job = self.model._default_manager.filter(pk=object_id).first() if object_id.isdigit() else None
        extra = {**(extra_context or {}), **(self.job_context(request, job) if job is not None else {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def status_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The job's status, progress and log: an htmx fragment that polls until the job ends."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = get_object_or_404(self.model, pk=pk)
        return render(request, self.job_status_template, self.job_context(request, job))
