"""Lore ingestion: files into versioned documents and embedded chunks, as an ingest job.

- Files are checked before anything is written (console.lore.files, console.lore.lorebook):
  one bad file fails the job with a message that says what to fix, and nothing of the job is
  written.
- Chunking follows the Markdown (console.lore.chunking).
- Embeddings are computed before the transaction; the transaction then supersedes the
  current version, replaces its chunks and adds the new version, all or nothing. A file whose
  checksum matches the current version is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.files import File
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from console.jobs.models import JobStatus
from console.jobs.services import job_claim, job_enqueue, job_log, job_run
from console.lore.chunking import lore_checksum, lore_passages
from console.lore.embeddings import embed, token_count
from console.lore.files import LORE_SUFFIXES, LoreFile, LoreFileError, lore_file_read, lore_size_check
from console.lore.graph import lore_graph_refresh
from console.lore.lorebook import LOREBOOK_SUFFIX, lorebook_read
from console.lore.packs import lore_packs_drop
from console.models import World
from console.models.lore import (
    IngestJob,
    LoreChunk,
    LoreDocument,
    LoreDocumentVersion,
    LoreVersionStatus,
)

logger = logging.getLogger(__name__)
# The task that runs it, sent by name (console.jobs.services.job_enqueue).
LORE_INGEST_TASK = "console.tasks.lore_ingest_task"


def lore_bytes_read(name: str, data: bytes) -> list[LoreFile]:
    """One file's lore: a lorebook (.json) gives a document per entry, any other file one."""
    if name.lower().endswith(LOREBOOK_SUFFIX):
        return lorebook_read(name, data)
    return [lore_file_read(name, data)]


def lore_upload_check(name: str, size: int, chunks: Iterable[bytes]) -> list[LoreFile]:
    """An uploaded file, checked (size first, before it is read) like any lore file."""
    lore_size_check(name, size)
    return lore_bytes_read(name, b"".join(chunks))


def lore_files_read(path: Path) -> list[LoreFile]:
    """Every lore file of a folder (sorted by name) or one file, all checked first."""
    if not path.exists():
        raise LoreFileError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    accepted = (*LORE_SUFFIXES, LOREBOOK_SUFFIX)
    found = [p for p in files if p.suffix.lower() in accepted] if path.is_dir() else files
    if not found:
        raise LoreFileError(f"{path}: no .md, .txt or .json (lorebook) files in it")
    read = [lore for file in found for lore in lore_bytes_read(file.name, file.read_bytes())]
    slugs = [item.slug for item in read]
    if len(set(slugs)) != len(slugs):
        twice = sorted({slug for slug in slugs if slugs.count(slug) > 1})
        raise LoreFileError(f"{path}: several files give the same document slug: {', '.join(twice)}")
    return read


@dataclass
class DocumentResult:
    slug: str
    outcome: str  # "created", "updated" or "unchanged"
    chunks: int


def lore_document_ingest(*, world: World, lore: LoreFile) -> DocumentResult:
    """One document in: skipped when unchanged, otherwise a new current version whose chunks
    replace the old ones in one transaction."""
    checksum = lore_checksum(lore.text)
    current = LoreDocumentVersion.objects.filter(
        document__world=world, document__slug=lore.slug, status=LoreVersionStatus.CURRENT
    ).first()
    if current is not None and current.checksum == checksum:
        return DocumentResult(lore.slug, "unchanged", 0)
    passages = lore_passages(lore.body or lore.text, count=token_count)
    # Embedded with their heading: a passage's section is part of what it is about.
    vectors = embed([f"{p.heading}\n{p.text}" if p.heading else p.text for p in passages])
    with transaction.atomic():
        document, created = LoreDocument.objects.select_for_update().get_or_create(
            world=world, slug=lore.slug, defaults={"title": lore.title, "source": lore.source}
        )
        versions = document.versions.select_for_update()
        current = versions.filter(status=LoreVersionStatus.CURRENT).first()
        if current is not None and current.checksum == checksum:
            return DocumentResult(lore.slug, "unchanged", 0)  # another job got here first
        if current is not None:
            LoreChunk.objects.filter(version=current).delete()
            current.status = LoreVersionStatus.SUPERSEDED
            current.save(update_fields=["status"])
        number = (versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        version = LoreDocumentVersion.objects.create(
            document=document, number=number, checksum=checksum, text=lore.text
        )
        LoreChunk.objects.bulk_create(
            LoreChunk(
                world=world,
                document=document,
                version=version,
                ordinal=index,
                heading=passage.heading,
                text=passage.text,
                tokens=passage.tokens,
                embedding=vector,
                conditions=lore.conditions,
            )  # fmt: skip
            for index, (passage, vector) in enumerate(zip(passages, vectors, strict=True))
        )
        if not created and (document.title, document.source) != (lore.title, lore.source):
            document.title, document.source = lore.title, lore.source
            document.save(update_fields=["title", "source", "updated_at"])
    return DocumentResult(lore.slug, "created" if current is None else "updated", len(passages))


# A running ingestion writes its row at least once per document (seconds each, a minute for a
# long one on CPU); a row silent for this long lost its worker, and a redelivery may take it.
INGEST_STALE_AFTER = timedelta(minutes=15)


def ingest_job_create(
    *, world: World, source: str, upload: File | None = None, created_by: Any = None
) -> IngestJob:
    """The job's row, queued (not sent: see `ingest_job_start`; `manage.py ingest` runs it here)."""
    job = IngestJob(world=world, source=source, created_by=created_by)
    if upload is not None:
        job.upload = upload  # stored by save()
    job.save()
    return job


def ingest_job_start(
    *, world: World, source: str, upload: File | None = None, created_by: Any = None
) -> IngestJob:
    """`ingest_job_create`, and the job sent to an io worker once the transaction commits."""
    job = ingest_job_create(world=world, source=source, upload=upload, created_by=created_by)
    job_enqueue(LORE_INGEST_TASK, job.pk)
    return job


def ingest_job_claim(job_id: int) -> bool:
    """Take a job for this execution: a queued one, or a running one whose worker died (silent
    for INGEST_STALE_AFTER): documents already written are skipped as unchanged. A redelivery
    of a job that is still running finds it taken and leaves."""
    stale = timezone.now() - INGEST_STALE_AFTER
    return job_claim(
        IngestJob,
        job_id,
        when=Q(status=JobStatus.QUEUED)
        | Q(status=JobStatus.RUNNING, heartbeat_at__lt=stale)
        | Q(status=JobStatus.RUNNING, heartbeat_at__isnull=True),
    )


def ingest_job_run(
    job: IngestJob,
    *,
    files: list[LoreFile] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestJob:
    """Run an ingestion job to its end; its row records status, progress, log and error.

    Every file is read and checked before the first document is written. Documents are
    written one by one, each in its own transaction, so a job stopped half-way is simply run
    again: what it had finished is skipped as unchanged."""

    def ingest(job: IngestJob) -> str:
        lore = files
        if lore is None and job.upload:
            with job.upload.open("rb") as upload:
                lore = lore_bytes_read(job.upload.name.rsplit("/", 1)[-1], upload.read())
        elif lore is None:
            lore = lore_files_read(Path(job.source))
        _ingest_files(job, lore, on_progress)
        return "done"

    return job_run(job, ingest, started=f"started on {job.source}", expected=(LoreFileError,))


def _ingest_files(
    job: IngestJob, files: list[LoreFile], on_progress: Callable[[int, int], None] | None
) -> None:
    written = skipped = chunks = 0
    for index, lore in enumerate(files, start=1):
        result = lore_document_ingest(world=job.world, lore=lore)
        if result.outcome == "unchanged":
            skipped += 1
        else:
            written += 1
            chunks += result.chunks
        progress = round(100 * index / len(files), 1)
        job_log(
            IngestJob, job.pk, f"{progress:.0f}% {lore.source}: {result.outcome}, {result.chunks} chunks",
            progress=progress, documents_written=written, documents_skipped=skipped, chunks_written=chunks,
            heartbeat_at=timezone.now(),
        )  # fmt: skip
        if on_progress is not None:
            on_progress(index, len(files))
    if written:
        graph = lore_graph_refresh(job.world)
        job_log(
            IngestJob, job.pk, f"lore graph: {graph.concepts} concepts ({graph.created} new, "
            f"{graph.removed} gone), {graph.events} events, {graph.relations} ties",
            heartbeat_at=timezone.now(),
        )  # fmt: skip
        dropped = lore_packs_drop(job.world)
        job_log(IngestJob, job.pk, f"{dropped} NPC lore packs dropped (rebuilt on their next turn)")
