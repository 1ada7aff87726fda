"""Lore uploads in the admin: checked before a job exists, ingested by the Celery task, and
followed live on the job's page (an htmx fragment that stops polling when the job ends)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from console.jobs.models import JobStatus
from console.models import IngestJob, LoreChunk, LoreDocument
from console.tasks import lore_ingest_task
from tests.factories import WorldFactory

pytestmark = pytest.mark.django_db

ADD = "/admin/console/ingestjob/add/"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    storage = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": tmp_path}}
    settings.STORAGES = {**settings.STORAGES, "default": storage}


def test_a_designer_uploads_lore_and_the_job_page_follows_it(designer_client):
    world = WorldFactory()
    upload = SimpleUploadedFile("fen.md", b"# The Fen\n\nThe Sallow Fen swallowed Crowford in 1174.")

    response = designer_client.post(ADD, {"world": world.pk, "upload": upload})

    assert response.status_code == 302, response.content.decode()[:2000]
    job = IngestJob.objects.get()
    assert (job.status, job.source) == (JobStatus.QUEUED, "upload:fen.md")
    polling = designer_client.get(f"/admin/console/ingestjob/{job.pk}/status/").content.decode()
    assert 'hx-trigger="every 1s"' in polling

    assert lore_ingest_task(job.pk) == JobStatus.SUCCEEDED  # what the Celery worker runs

    done = designer_client.get(f"/admin/console/ingestjob/{job.pk}/status/").content.decode()
    assert "hx-trigger" not in done  # finished: the page stops polling
    assert "100%" in done
    assert LoreDocument.objects.get().title == "The Fen"
    assert LoreChunk.objects.filter(text__contains="swallowed Crowford").exists()
    page = designer_client.get(f"/admin/console/ingestjob/{job.pk}/change/").content.decode()
    assert "htmx-2.min.js" in page


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("relic.md", b"\x00\x01binary", "binary data"),
        ("empty.md", b"", "empty"),
        ("big.md", b"x" * 2048, "over the"),
        ("book.json", b"{nope", "not a JSON lorebook"),
    ],
)
def test_a_bad_upload_is_refused_on_the_form_and_no_job_is_created(
    designer_client, settings, name, data, message
):
    settings.LORE_MAX_FILE_BYTES = 1024

    response = designer_client.post(
        ADD, {"world": WorldFactory().pk, "upload": SimpleUploadedFile(name, data)}
    )

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not IngestJob.objects.exists()


def test_ops_cannot_upload(ops_client):
    assert ops_client.get(ADD).status_code == 403
