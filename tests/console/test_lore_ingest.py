"""Lore ingestion against the real embedding model and Postgres with pgvector: chunking,
versions, idempotent re-ingestion, refused files, the command and the Celery task."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone
from pgvector.django import CosineDistance

from console.jobs.models import JobStatus
from console.lore.chunking import lore_passages
from console.lore.embeddings import embed, token_count
from console.lore.files import LoreFileError, lore_file_read
from console.lore.ingest import INGEST_STALE_AFTER, ingest_job_run, lore_document_ingest
from console.models import IngestJob, LoreChunk, LoreDocument, LoreDocumentVersion
from console.tasks import lore_ingest_task
from tests.factories import WorldFactory

pytestmark = pytest.mark.django_db

DEMO_LORE = Path(settings.DEMO_DIR) / "lore"
GAZETTEER = DEMO_LORE / "01-gazetteer-of-ravenmoor.md"


def _sentences(count: int, topic: str) -> str:
    return " ".join(
        f"The {topic} record number {index} tells of a night on the moor." for index in range(count)
    )


def test_passages_keep_sections_apart_stay_in_budget_and_overlap():
    text = f"# Book\n\n## Castle\n\n{_sentences(40, 'castle')}\n\n## Fen\n\n{_sentences(3, 'fen')}"

    passages = lore_passages(text, count=token_count, max_tokens=80, overlap_tokens=20)

    assert {p.heading for p in passages} == {"Castle", "Fen"}
    assert all(p.tokens <= 80 for p in passages)
    castle = [p for p in passages if p.heading == "Castle"]
    assert len(castle) > 3
    for before, after in zip(castle, castle[1:], strict=False):
        last_sentence = before.text.rsplit(". ", 1)[-1]
        assert after.text.startswith(last_sentence.rstrip(".")), (before.text, after.text)  # the overlap
    for index in range(40):  # nothing lost
        assert any(f"record number {index} tells" in p.text for p in castle)
    assert [p.text for p in passages if p.heading == "Fen"] == [_sentences(3, "fen")]


def test_a_document_is_chunked_embedded_and_found_by_meaning():
    world = WorldFactory()

    result = lore_document_ingest(world=world, lore=lore_file_read(GAZETTEER.name, GAZETTEER.read_bytes()))

    chunks = LoreChunk.objects.filter(document__slug="gazetteer-of-ravenmoor")
    assert result.outcome == "created"
    assert result.chunks == chunks.count() >= 5
    assert LoreDocument.objects.get().title == "A Gazetteer of Ravenmoor"
    assert all(len(chunk.embedding) == 384 for chunk in chunks)
    query = embed(["When was Castle Valerian built, and by whom?"])[0]
    best = chunks.order_by(CosineDistance("embedding", query)).first()
    assert best is not None
    assert "1012" in best.text  # "The castle was raised in 1012 by Oderic"


def test_reingesting_skips_an_unchanged_document_and_replaces_the_chunks_of_an_edited_one():
    world = WorldFactory()
    original = lore_file_read("moor.md", b"# The Moor\n\n" + _sentences(30, "moor").encode())
    edited = lore_file_read(
        "moor.md", b"# The Moor\n\nThe moor was drained in 1190. " + _sentences(5, "moor").encode()
    )

    lore_document_ingest(world=world, lore=original)
    first_ids = set(LoreChunk.objects.values_list("pk", flat=True))
    again = lore_document_ingest(world=world, lore=original)
    changed = lore_document_ingest(world=world, lore=edited)

    assert (again.outcome, again.chunks) == ("unchanged", 0)
    assert set(LoreChunk.objects.values_list("pk", flat=True)).isdisjoint(first_ids)
    assert changed.outcome == "updated"
    assert LoreChunk.objects.count() == changed.chunks  # no duplicates, nothing of v1 left
    assert LoreChunk.objects.filter(text__contains="drained in 1190").exists()
    versions = LoreDocumentVersion.objects.order_by("number")
    assert [(v.number, v.status) for v in versions] == [(1, "superseded"), (2, "current")]
    assert set(LoreChunk.objects.values_list("version__number", flat=True)) == {2}


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("relic.md", b"# Relic\x00\x01\x02binary", "binary data"),
        ("empty.md", b"  \n\n ", "empty"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("huge.md", b"x" * 2048, "over the"),
        ("picture.png", b"\x89PNG", "not a lore file"),
    ],
)
def test_a_bad_file_fails_the_job_with_a_clear_error_and_nothing_is_written(
    tmp_path, settings, name, data, message
):
    settings.LORE_MAX_FILE_BYTES = 1024
    (tmp_path / "01-good.md").write_text("# Good\n\nThe good document.")
    (tmp_path / name).write_bytes(data)
    job = IngestJob.objects.create(
        world=WorldFactory(), source=str(tmp_path / name if name.endswith(".png") else tmp_path)
    )

    ingest_job_run(job)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert message in job.error
    assert name in job.error
    assert not LoreDocument.objects.exists()  # not even the good file: all are checked first
    assert not LoreChunk.objects.exists()


def test_a_fifty_megabyte_file_is_refused_before_it_is_read_as_lore():
    with pytest.raises(LoreFileError, match="50.0 MB is over the 5 MB limit"):
        lore_file_read("tome.md", b"a" * 50_000_000)


def test_the_ingest_command_writes_the_demo_lore_once_with_progress_in_the_job(tmp_path):
    world = WorldFactory(slug="ravenmoor")
    for path in sorted(DEMO_LORE.glob("*.md"))[:3]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    out = StringIO()

    call_command("ingest", str(tmp_path), world="ravenmoor", stdout=out)
    call_command("ingest", str(tmp_path), world="ravenmoor", stdout=out)

    first, second = IngestJob.objects.order_by("created_at")
    assert (first.status, first.progress, first.documents_written) == (JobStatus.SUCCEEDED, 100.0, 3)
    assert (second.documents_written, second.documents_skipped, second.chunks_written) == (0, 3, 0)
    assert "33% " in first.log
    assert "3 documents written" in out.getvalue()
    assert LoreDocument.objects.filter(world=world).count() == 3
    with pytest.raises(CommandError, match="no world 'atlantis'"):
        call_command("ingest", str(tmp_path), world="atlantis")


def test_the_celery_task_runs_a_queued_job_once(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\nA short text about the Greywood.")
    job = IngestJob.objects.create(world=WorldFactory(), source=str(tmp_path))

    assert lore_ingest_task(job.pk) == JobStatus.SUCCEEDED
    assert lore_ingest_task(job.pk) == JobStatus.SUCCEEDED  # finished: left alone

    job.refresh_from_db()
    assert job.log.count("started on") == 1
    assert LoreChunk.objects.count() == 1


def test_a_redelivered_task_leaves_a_running_job_alone_and_takes_one_whose_worker_went_silent(tmp_path):
    # Given a job another worker is running now, and one whose worker stopped writing long ago
    (tmp_path / "moor.md").write_text("# The moor\n\nThe moor is quiet at night.\n")
    world = WorldFactory()
    alive, silent = (
        IngestJob.objects.create(
            world=world, source=str(tmp_path), status=JobStatus.RUNNING, heartbeat_at=when
        )
        for when in (timezone.now(), timezone.now() - INGEST_STALE_AFTER - timedelta(minutes=1))
    )

    # When the task is delivered again for each
    left = lore_ingest_task(alive.pk)
    taken = lore_ingest_task(silent.pk)

    # Then the running one is left to its worker; the silent one is run to its end here
    assert left == JobStatus.RUNNING
    assert IngestJob.objects.get(pk=alive.pk).log == ""
    assert taken == JobStatus.SUCCEEDED
    assert IngestJob.objects.get(pk=silent.pk).documents_written == 1
