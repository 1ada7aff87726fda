"""Lore ingestion: text files into versioned documents and embedded chunks.

- Files are checked before anything is written (UTF-8 text, not empty, under
  LORE_MAX_FILE_BYTES, a .md/.markdown/.txt name): one bad file fails the job with a message
  that says what to fix, and nothing of the job is written.
- Chunking follows the Markdown: sections under their heading, then sentences packed up to
  LORE_CHUNK_TOKENS word pieces of the embedding model, each chunk starting with the last
  LORE_CHUNK_OVERLAP tokens' worth of sentences of the one before (in the same section).
- Embeddings are computed before the transaction; the transaction then supersedes the
  current version, replaces its chunks and adds the new version, all or nothing. A file whose
  checksum matches the current version is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from console.jobs.models import JobStatus
from console.jobs.services import job_claim, job_enqueue, job_log, job_run
from console.models import World
from console.models.lore import (
    IngestJob,
    LoreChunk,
    LoreDocument,
    LoreDocumentVersion,
    LoreVersionStatus,
)
from memory.lore import CONDITION_KEYS

logger = logging.getLogger(__name__)

LORE_SUFFIXES = (".md", ".markdown", ".txt")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")


class LoreFileError(ValueError):
    """A lore file that cannot be ingested; the message names the file and what to fix."""


@dataclass(frozen=True)
class LoreFile:
    slug: str
    title: str
    source: str
    text: str  # as the file has it, front matter included (the checksum covers both)
    body: str = ""  # what is chunked
    conditions: dict[str, list[str]] = field(default_factory=dict)  # gating for every chunk


def _front_matter(name: str, text: str) -> tuple[dict[str, list[str]], str]:
    """Gating conditions from a YAML front matter block, and the text after it:

    ---
    archetypes: [vampire]
    quests: [blood-debt=paid]
    ---
    """
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        raise LoreFileError(f"{name}: the front matter opened with --- is never closed with ---")
    try:
        data = yaml.safe_load(text[4:end]) or {}
    except yaml.YAMLError as exc:
        raise LoreFileError(f"{name}: the front matter is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or set(data) - set(CONDITION_KEYS):
        raise LoreFileError(
            f"{name}: the front matter may only hold {', '.join(CONDITION_KEYS)} (lists of slugs)"
        )
    conditions = {}
    for key, value in data.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(item, str) and item for item in values):
            raise LoreFileError(f"{name}: front matter {key} must be a slug or a list of slugs")
        conditions[key] = values
    return conditions, text[end + 4 :].strip()


@dataclass(frozen=True)
class Passage:
    heading: str
    text: str
    tokens: int


def lore_size_check(name: str, size: int) -> None:
    """Refuse a file over LORE_MAX_FILE_BYTES (documents, lorebooks and uploads alike)."""
    limit = settings.LORE_MAX_FILE_BYTES
    if size > limit:
        raise LoreFileError(
            f"{name}: {size / 1e6:.1f} MB is over the {limit / 1e6:.0f} MB limit "
            "(LORE_MAX_FILE_BYTES); split it into several documents"
        )


def lore_file_read(name: str, data: bytes) -> LoreFile:
    """Check and decode one file (from a folder or an upload)."""
    if not name.lower().endswith(LORE_SUFFIXES):
        raise LoreFileError(f"{name}: not a lore file; use Markdown (.md) or text (.txt)")
    lore_size_check(name, len(data))
    if b"\x00" in data:
        raise LoreFileError(f"{name}: binary data (NUL bytes); lore must be UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoreFileError(
            f"{name}: not UTF-8 text (byte {exc.start}); save it as UTF-8 and upload it again"
        ) from None
    text = text.replace("\r\n", "\n").strip()
    conditions, body = _front_matter(name, text)
    if not body:
        raise LoreFileError(f"{name}: the file is empty")
    stem = Path(name).stem
    slug = slugify(re.sub(r"^\d+[-_ ]+", "", stem))[:64] or slugify(stem)[:64]
    if not slug:
        raise LoreFileError(f"{name}: the file name gives no slug; use letters or digits")
    first = body.splitlines()[0]
    heading = _HEADING.match(first)
    title = heading.group(2) if heading else stem.replace("-", " ").replace("_", " ").strip().capitalize()
    return LoreFile(slug=slug, title=title[:200], source=name, text=text, body=body, conditions=conditions)


def lore_bytes_read(name: str, data: bytes) -> list[LoreFile]:
    """One file's lore: a lorebook (.json) gives a document per entry, any other file one."""
    from console.services.lorebook import LOREBOOK_SUFFIX, lorebook_read

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
    from console.services.lorebook import LOREBOOK_SUFFIX

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


def _sections(text: str) -> Iterable[tuple[str, list[str]]]:
    """(heading, paragraphs) in order; text before the first heading has the heading ""."""
    heading, paragraph, paragraphs = "", [], []  # type: ignore[var-annotated]
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            if paragraph:
                paragraphs.append(" ".join(paragraph))
            if paragraphs:
                yield heading, paragraphs
            heading, paragraph, paragraphs = match.group(2)[:200], [], []
        elif not line.strip():
            if paragraph:
                paragraphs.append(" ".join(paragraph))
            paragraph = []
        else:
            paragraph.append(line.strip())
    if paragraph:
        paragraphs.append(" ".join(paragraph))
    if paragraphs:
        yield heading, paragraphs


def _units(paragraph: str, count: Callable[[str], int], max_tokens: int) -> list[tuple[str, int]]:
    """A paragraph's sentences with their token counts; an over-long sentence cut by words."""
    units = []
    for sentence in _SENTENCE_END.split(paragraph):
        sentence = sentence.strip()
        if not sentence:
            continue
        tokens = count(sentence)
        if tokens <= max_tokens:
            units.append((sentence, tokens))
            continue
        words, piece = sentence.split(), []  # type: ignore[var-annotated]
        for word in words:
            if piece and count(" ".join([*piece, word])) > max_tokens:
                units.append((" ".join(piece), count(" ".join(piece))))
                piece = []
            piece.append(word)
        if piece:
            units.append((" ".join(piece), count(" ".join(piece))))
    return units


def lore_passages(
    text: str,
    *,
    count: Callable[[str], int],
    max_tokens: int | None = None,
    overlap_tokens: int | None = None,
) -> list[Passage]:
    """Cut `text` into passages of at most `max_tokens` (see the module docstring).

    Hand-written rather than a splitter library: it must count in the embedding model's own
    tokenizer and keep Markdown sections apart, in about forty lines; the general splitters
    bring a framework along."""
    max_tokens = max_tokens or settings.LORE_CHUNK_TOKENS
    overlap_tokens = settings.LORE_CHUNK_OVERLAP if overlap_tokens is None else overlap_tokens
    passages: list[Passage] = []
    for heading, paragraphs in _sections(text):
        units = [unit for paragraph in paragraphs for unit in _units(paragraph, count, max_tokens)]
        chunk: list[tuple[str, int]] = []
        fresh = 0  # units in `chunk` that no earlier passage holds
        for unit in units:
            if chunk and sum(tokens for _, tokens in chunk) + unit[1] > max_tokens:
                passages.append(_passage(heading, chunk))
                carried: list[tuple[str, int]] = []
                for previous in reversed(chunk):
                    if sum(tokens for _, tokens in carried) + previous[1] > overlap_tokens:
                        break
                    carried.insert(0, previous)
                # The overlap must leave room for the new sentence.
                while carried and sum(tokens for _, tokens in carried) + unit[1] > max_tokens:
                    carried.pop(0)
                chunk, fresh = carried, 0
            chunk.append(unit)
            fresh += 1
        if chunk and fresh:
            passages.append(_passage(heading, chunk))
    return passages


def _passage(heading: str, units: list[tuple[str, int]]) -> Passage:
    return Passage(heading=heading, text=" ".join(text for text, _ in units), tokens=sum(t for _, t in units))


def lore_checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class DocumentResult:
    slug: str
    outcome: str  # "created", "updated" or "unchanged"
    chunks: int


def lore_document_ingest(*, world: World, lore: LoreFile) -> DocumentResult:
    """One document in: skipped when unchanged, otherwise a new current version whose chunks
    replace the old ones in one transaction."""
    from memory.embeddings import embed, token_count

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
    from console.tasks import lore_ingest_task  # console.tasks imports this module for the run

    job = ingest_job_create(world=world, source=source, upload=upload, created_by=created_by)
    job_enqueue(lore_ingest_task, job.pk)
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
        from console.services.lore_graph import lore_graph_refresh

        graph = lore_graph_refresh(job.world)
        job_log(
            IngestJob, job.pk, f"lore graph: {graph.concepts} concepts ({graph.created} new, "
            f"{graph.removed} gone), {graph.events} events, {graph.relations} ties",
            heartbeat_at=timezone.now(),
        )  # fmt: skip
        dropped = lore_packs_drop(job.world)
        job_log(IngestJob, job.pk, f"{dropped} NPC lore packs dropped (rebuilt on their next turn)")


def lore_packs_drop(world: World) -> int:
    """Drop the Redis lore packs of a world's NPCs after its lore changed."""
    from console.models import NPC
    from console.redis_clients import redis_sync
    from memory.lore import pack_key

    slugs = list(NPC.objects.filter(archetype__world=world).values_list("slug", flat=True))
    if not slugs:
        return 0
    client = redis_sync()
    try:
        return int(client.delete(*(pack_key(slug) for slug in slugs)))
    finally:
        client.close()
