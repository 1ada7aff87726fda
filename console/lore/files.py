"""Lore files: one Markdown or text document read and checked before anything is written
(UTF-8 text, not empty, under LORE_MAX_FILE_BYTES, a .md/.markdown/.txt name), with its gating
conditions from a YAML front matter block. Lorebooks (console.lore.lorebook) become the same
LoreFile, one per entry; console.lore.ingest writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from django.conf import settings
from django.utils.text import slugify

from console.lore.gating import CONDITION_KEYS

LORE_SUFFIXES = (".md", ".markdown", ".txt")
# A Markdown heading line: a document's title, and where console.lore.chunking splits sections.
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


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
    heading = HEADING.match(first)
    title = heading.group(2) if heading else stem.replace("-", " ").replace("_", " ").strip().capitalize()
    return LoreFile(slug=slug, title=title[:200], source=name, text=text, body=body, conditions=conditions)
