"""Chunking: a document's Markdown into passages. Sections under their heading, then sentences
packed up to LORE_CHUNK_TOKENS word pieces of the embedding model, each passage starting with
the last LORE_CHUNK_OVERLAP tokens' worth of sentences of the one before (in the same section)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings

from console.lore.files import HEADING

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")


@dataclass(frozen=True)
class Passage:
    heading: str
    text: str
    tokens: int


def _sections(text: str) -> Iterable[tuple[str, list[str]]]:
    """(heading, paragraphs) in order; text before the first heading has the heading ""."""
    heading, paragraph, paragraphs = "", [], []  # type: ignore[var-annotated]
    for line in text.splitlines():
        match = HEADING.match(line)
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
