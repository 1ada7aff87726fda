"""World Info import: a SillyTavern / TavernAI lorebook becomes lore documents, one per entry.

Three shapes are read:
- a character card V2 (`{"spec": "chara_card_v2", "data": {"character_book": {...}}}`);
- a bare character book (`{"name": …, "entries": [ {keys, content, enabled, name, comment, id} ]}`);
- a SillyTavern World Info file (`{"entries": {"0": {key, content, disable, comment, uid}}}`).

Each enabled entry with content becomes a document titled by its name or comment (else its
first key); its keys are written into the text ("Known as: …") so that search finds the entry
by the words its keys were chosen for. Keyword triggering itself is not copied: our prompts
pick lore by meaning (console.lore.packs).
"""

from __future__ import annotations

import json
from typing import Any

from django.utils.text import slugify

from console.lore.files import LoreFile, LoreFileError, lore_file_read, lore_size_check

LOREBOOK_SUFFIX = ".json"


def _entries(name: str, book: Any) -> tuple[str, list[dict[str, Any]]]:
    """The book's name and its entries, whichever of the three shapes it has."""
    if not isinstance(book, dict):
        raise LoreFileError(f"{name}: a lorebook is a JSON object")
    if isinstance(book.get("data"), dict):  # a character card V2
        card = book["data"]
        inner = card.get("character_book")
        if not isinstance(inner, dict):
            raise LoreFileError(f"{name}: this character card has no character_book to import")
        return str(inner.get("name") or card.get("name") or ""), _entry_list(name, inner.get("entries"))
    return str(book.get("name") or ""), _entry_list(name, book.get("entries"))


def _entry_list(name: str, entries: Any) -> list[dict[str, Any]]:
    if isinstance(entries, dict):  # SillyTavern World Info: {"0": {...}, "1": {...}}
        entries = list(entries.values())
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise LoreFileError(f"{name}: `entries` must be a list (or an object) of entries")
    return entries


def lorebook_read(name: str, data: bytes) -> list[LoreFile]:
    """The lorebook's entries as lore files (checked like any lore file)."""
    lore_size_check(name, len(data))
    try:
        book = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoreFileError(f"{name}: not a JSON lorebook ({exc})") from None
    book_name, entries = _entries(name, book)
    prefix = slugify(book_name or name.rsplit(".", 1)[0])[:24] or "lorebook"
    files: list[LoreFile] = []
    for index, entry in enumerate(entries):
        content = str(entry.get("content") or "").strip()
        if not content or entry.get("enabled") is False or entry.get("disable") is True:
            continue
        keys = [str(key).strip() for key in (entry.get("keys") or entry.get("key") or []) if str(key).strip()]
        title = str(entry.get("name") or entry.get("comment") or (keys[0] if keys else f"Entry {index + 1}"))
        title = " ".join(title.split())[:120]
        uid = entry.get("id", entry.get("uid", index))
        text = f"# {title}\n\n" + (f"Known as: {', '.join(keys)}.\n\n" if keys else "") + content
        read = lore_file_read(f"{prefix}-{slugify(title)[:30]}-{uid}.md", text.encode())
        files.append(
            LoreFile(slug=read.slug, title=read.title, source=f"{name}#{uid}", text=read.text, body=read.body)
        )
    if not files:
        raise LoreFileError(f"{name}: the lorebook has no enabled entry with content")
    return files
