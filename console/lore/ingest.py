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
from pathlib import Path

from django.db import close_old_connections, transaction
from django.utils import timezone

from console.lore.chunking import lore_checksum, lore_passages
from console.lore.embeddings import embed, token_count
from console.lore.files import LORE_SUFFIXES, LoreFile, LoreFileError, lore_file_read, lore_size_check
from console.lore.graph import lore_graph_refresh
from console.lore.lorebook import LOREBOOK_SUFFIX, lorebook_read
from console.lore.packs import lore_packs_drop
from console.models import World
from console.models.lore import (
    IngestJob,
    IngestStatus,
    LoreChunk,
    LoreDocument,
    LoreDocumentVersion,
    LoreVersionStatus,
)

logger = logging.getLogger(__name__)


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


def _job_log(job: IngestJob, line: str, **fields: object) -> None:
    job.log += f"{timezone.now():%H:%M:%S} {line}\n"
    for name, value in fields.items():
        setattr(job, name, value)
    job.save(update_fields=["log", *fields])
    logger.info("ingest job %s: %s", job.pk, line)


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
    _job_log(
        job, f"started on {job.source}", status=IngestStatus.RUNNING, started_at=timezone.now(), error=""
    )
    try:
        if files is None and job.upload:
            with job.upload.open("rb") as upload:
                files = lore_bytes_read(job.upload.name.rsplit("/", 1)[-1], upload.read())
        elif files is None:
            files = lore_files_read(Path(job.source))
    except LoreFileError as exc:
        _job_log(
            job, f"failed: {exc}", status=IngestStatus.FAILED, error=str(exc), finished_at=timezone.now()
        )
        return job
    try:
        _ingest_files(job, files, on_progress)
    except Exception as exc:  # noqa: BLE001 - the row says why, whatever it was
        # A database error (a refused value, Postgres restarting) would leave the job `running`
        # for good: the Celery task acks it and nothing looks at the row again. Documents are
        # written one transaction each, so what was finished stays and a rerun skips it.
        logger.exception("ingest job %s failed", job.pk)
        close_old_connections()  # a broken connection is replaced before the row is written
        _job_log(
            job, f"failed: {exc}", status=IngestStatus.FAILED, error=str(exc) or repr(exc),
            finished_at=timezone.now(),
        )  # fmt: skip
    return job


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
        _job_log(
            job, f"{progress:.0f}% {lore.source}: {result.outcome}, {result.chunks} chunks",
            progress=progress, documents_written=written, documents_skipped=skipped, chunks_written=chunks,
        )  # fmt: skip
        if on_progress is not None:
            on_progress(index, len(files))
    if written:
        graph = lore_graph_refresh(job.world)
        _job_log(
            job, f"lore graph: {graph.concepts} concepts ({graph.created} new, {graph.removed} gone), "
            f"{graph.events} events, {graph.relations} ties",
        )  # fmt: skip
        dropped = lore_packs_drop(job.world)
        _job_log(job, f"{dropped} NPC lore packs dropped (rebuilt on their next turn)")
    _job_log(job, "done", status=IngestStatus.SUCCEEDED, finished_at=timezone.now())
