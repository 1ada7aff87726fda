"""The lore graph: concepts (people, places, factions, items), dated events and the ties
between concepts, extracted from a world's current lore chunks.

Extraction is rules, not a model. The embedding package we ship has no entity recogniser,
spaCy's and NLTK's models are downloads (not allowed here), and lore prose is regular enough:
names are capitalised runs ("Chapel of Saint Aldric", "Raven's Tooth"), their last or first
word says what they are ("... Hill" is a place, "Prior ..." a person, "... Guild" a faction),
and chronicles date their entries ("**1012.** ...", "in 1102"). The world's own records name
the rest: NPCs are people, regions places, subfactions factions. A designer corrects a kind
or adds a concept in the admin; a refresh keeps those rows (matched by name) and links every
concept, found or hand-made, to the passages that mention it.

A refresh rebuilds links, events and `mentioned_with` ties for the whole world in one
transaction, so readers see the old graph or the new one, never half of it.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction

from console.lore.embeddings import vocabulary
from console.models import (
    NPC,
    Concept,
    ConceptKind,
    ConceptRelation,
    LoreChunk,
    LoreEvent,
    Region,
    Subfaction,
    World,
)

logger = logging.getLogger(__name__)

MENTIONED_WITH = "mentioned_with"
EVENT_MAX_CHARS = 500
NAME_MAX_CHARS = 120

# A name: capitalised words, joined by "of", "the", "de" or an apostrophe-s ("Raven's Tooth").
_WORD = r"[A-Z][a-zA-Z\-]+(?:'s)?"
_NAME = re.compile(rf"\b{_WORD}(?:\s+(?:(?:of|the|de)\s+)*{_WORD})*")
_SENTENCE = re.compile(r"(?<=[.!?])[\"'”’)]*\s+(?=[\"'“‘(]*[A-Z*])")
# "**1012.** Hollowmere is chartered", "1012: ...", "In 1012, ..." and "in the year 1139".
_ENTRY = re.compile(r"(?:\*\*|^)(1?\d{3,4})(?:\.?\*\*\.?|[.:](?=\s))", re.M)
# Inline years have four digits: "in 540 households" is no date.
_YEAR_IN = re.compile(
    r"\b(?:in|of|since|by|until|from|year)\s+(?:the\s+year\s+)?(?P<year>[12]\d{3})\b(?![,.]\d)"
)

# Sentence-initial words that are not names however they are written.
_NOT_NAMES = frozenset(
    """a an and as at be but by for from he her his i if in into it its my no not of on once one or our
    she so some that the their them then there these they this those though to two three four five
    we what when where which while who why with you your after before beyond less more most nothing
    north south east west first second third fourth fifth last every each all any many few both
    here now yet still only even also never always set compiled kept sealed""".split()
)
_PERSON_TITLES = frozenset(
    """count countess lord lady sir dame prior abbot brother sister father mother master mistress
    captain reeve king queen prince princess duke duchess baron baroness saint st bishop elder
    widow old magistra archlich goodwife goodman""".split()
)
_PLACE_WORDS = frozenset(
    """hill hills wood woods forest abbey chapel church castle keep tower spire hall halls stones
    track road lane square market marsh fen mere moor river beck bridge inn tavern gate gates wall
    catacombs crypt crag tooth village town city ford well vaults gallery ossuary landing causeway
    island islands mountain mountains valley vale cave caves mine quarter ruins field fields oak row
    infirmary mill yard cross barrow pool mire lake mount fort port""".split()
)
_PLACE_SUFFIXES = ("wood", "mere", "moor", "ford", "gate", "ham", "ton", "bury", "hollow", "fen", "wick")
_FACTION_WORDS = frozenset(
    """guild order clan clans wardens court brotherhood sisterhood circle coven pack company council
    house houses church watch legion host brood kin cult""".split()
)
_ITEM_WORDS = frozenset(
    """sword blade dagger amulet ring testament book tome chalice relic lantern crown candle
    scroll map maps journal ledger key stone staff""".split()
)


_OTHER_WORDS = frozenset(
    """pact tithe agreement covenant concord treaty mass feast night nights year winter summer bell
    war plague sweat fever vintage""".split()
)


def _words(name: str) -> list[str]:
    return [word.lower().removesuffix("'s") for word in name.split()]


def concept_kind(name: str) -> str:
    """What a name is, from its first and last words (a guess a designer can correct)."""
    words = _words(name)
    first, last = words[0], words[-1]
    if last in _FACTION_WORDS:
        return ConceptKind.FACTION
    if first in _PERSON_TITLES and last not in _PLACE_WORDS | _OTHER_WORDS and "'s " not in name:
        return ConceptKind.PERSON
    if (
        last in _PLACE_WORDS
        or first in _PLACE_WORDS
        and " of " not in name  # "Castle Valerian", not "Chapel of ..."
        or len(words) == 1
        and last.endswith(_PLACE_SUFFIXES)
    ):
        return ConceptKind.PLACE
    if first in _PLACE_WORDS:
        return ConceptKind.PLACE
    if last in _ITEM_WORDS:
        return ConceptKind.ITEM
    if last in _OTHER_WORDS or first in _OTHER_WORDS:
        return ConceptKind.OTHER
    if len(words) in (2, 3) and not {"of", "the"} & set(words):
        return ConceptKind.PERSON  # "Aldous Morrath", "Ebbe Lorn"
    return ConceptKind.OTHER


def _lines(text: str) -> Iterable[tuple[bool, str]]:
    """(is a heading, a heading, list item or paragraph without Markdown emphasis): wrapped
    lines of one paragraph are joined, so a line's start is not taken for a sentence's."""
    paragraph: list[str] = []
    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        block = (
            not line or line.startswith(("#", "- ", "* ", "+ ", ">", "|")) or line[:3].rstrip(".").isdigit()
        )
        if block and paragraph:
            yield False, " ".join(paragraph)
            paragraph = []
        if not line:
            continue
        clean = re.sub(r"[*_`]+", "", line.lstrip("#>-+|* ")).strip()
        if not block:
            paragraph.append(clean)
        elif clean:
            yield line.startswith("#"), clean


def _sentences(text: str) -> list[str]:
    return [part.strip() for _, line in _lines(text) for part in _SENTENCE.split(line) if part.strip()]


def _split_name(run: str) -> list[str]:
    """A capitalised run cut where a sentence word starts a new one ("Tonight Oswin" is
    "Oswin"), without its possessive ("Count's" is "Count"), and a titled person or a place
    cut from what they are "of" ("Prior Anselm of Saint Aldric": both)."""
    parts: list[list[str]] = [[]]
    for word in run.split():
        if word[0].isupper() and word.lower().removesuffix("'s") in _NOT_NAMES:
            parts.append([])
        else:
            parts[-1].append(word)
    names = []
    for words in parts:
        while words and words[-1].lower() in {"of", "the", "de"}:
            words = words[:-1]
        while words and words[0].lower() in {"of", "the", "de"}:
            words = words[1:]
        name = " ".join(words).removesuffix("'s")[:NAME_MAX_CHARS]
        if not name or all(word in _PERSON_TITLES for word in _words(name)):
            continue  # "Lady" alone is nobody in particular
        head, of, rest = name.partition(" of ")
        if of and " " in head and concept_kind(head) in (ConceptKind.PERSON, ConceptKind.PLACE):
            names += [head, *_split_name(rest)]
        else:
            names.append(name)
    return names


def _common(words: list[str]) -> bool:
    """Whether a run's first word is an ordinary word ("Paid", "Near") rather than a name
    ("Oderic") or a title or place word ("Abbot", "Castle") that begins one."""
    first = words[0].lower().removesuffix("'s")
    if words[1] in ("the", "of"):
        return True  # "Kill the Shambler"
    named = _PERSON_TITLES | _PLACE_WORDS | _FACTION_WORDS | _ITEM_WORDS | _OTHER_WORDS
    return first in vocabulary() and first not in named


def concept_names(texts: Iterable[str]) -> Counter[str]:
    """Names mentioned in a world's passages, with how often.

    At a sentence's start a capital says little, so there a run loses ordinary English first
    words that are never capitalised mid-sentence ("Paid Mara Holt" is "Mara Holt"; "Oderic
    Valerian" and "Abbot Hieronymus" stay). A single word counts only if it is capitalised mid-sentence at
    least twice; a heading's names only if the prose has them too (title-case headings are
    not names)."""
    runs: list[tuple[str, bool]] = []  # (run, at a sentence's start), prose only
    for text in texts:
        for heading, line in _lines(text):
            if heading:
                continue
            for sentence in _SENTENCE.split(line):
                sentence = sentence.strip().lstrip("\"'“‘(")
                runs += [(match.group(), match.start() == 0) for match in _NAME.finditer(sentence)]
    capitalised_mid = Counter(
        word.removesuffix("'s") for run, start in runs if not start for word in run.split()
    )
    found: Counter[str] = Counter()
    mid_sentence: Counter[str] = Counter()
    for run, start in runs:
        words = run.split()
        if start and len(words) > 1 and words[0] not in capitalised_mid and _common(words):
            words = words[1:]
        for name in _split_name(" ".join(words)):
            found[name] += 1
            mid_sentence[name] += not start
    return Counter({name: n for name, n in found.items() if " " in name or mid_sentence[name] >= 2})


@dataclass
class ExtractedEvent:
    year: int | None
    description: str


def lore_events(text: str) -> list[ExtractedEvent]:
    """Dated happenings: chronicle entries ("**1012.** ...", a line "1012: ..."), each to the
    end of its paragraph; elsewhere sentences that name a year ("in 1102", "in the year 1139")."""
    events = []
    pieces = _ENTRY.split(text)  # [prose, year, entry and prose, year, entry and prose, ...]
    prose = [pieces[0]]
    for year, piece in zip(pieces[1::2], pieces[2::2], strict=True):
        entry, _, rest = piece.partition("\n\n")
        prose.append(rest)
        description = re.sub(r"\s+", " ", re.sub(r"[*_`#]+", "", entry)).strip()
        if description:
            events.append(ExtractedEvent(int(year), description[:EVENT_MAX_CHARS]))
    for sentence in _sentences("\n\n".join(prose)):
        dated = _YEAR_IN.search(sentence)
        if dated:
            events.append(ExtractedEvent(int(dated["year"]), sentence[:EVENT_MAX_CHARS]))
    return events


def _known_kinds(world: World) -> dict[str, str]:
    """Names the world's own records settle: its NPCs, regions and subfactions."""
    npcs = NPC.objects.filter(archetype__world=world).values_list("name", flat=True)
    regions = Region.objects.filter(world=world).values_list("name", flat=True)
    subfactions = Subfaction.objects.filter(archetype__world=world).values_list("name", flat=True)
    known: dict[str, str] = {name: ConceptKind.PERSON for name in npcs}
    known |= {name: ConceptKind.PLACE for name in regions}
    known |= {name: ConceptKind.FACTION for name in subfactions}
    return known


def _mention_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(names), key=len, reverse=True)  # the longest name wins an overlap
    if not ordered:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(name) for name in ordered) + r")\b")


@dataclass
class GraphResult:
    concepts: int
    created: int
    removed: int
    events: int
    relations: int


def lore_graph_refresh(world: World) -> GraphResult:
    """Rebuild a world's concepts, events and ties from its current chunks (one transaction)."""
    chunks = list(LoreChunk.objects.filter(world=world).order_by("pk").values_list("pk", "text"))
    names = set(concept_names(text for _, text in chunks))
    known = _known_kinds(world)
    with transaction.atomic():
        World.objects.select_for_update().filter(pk=world.pk).first()  # one refresh per world at a time
        existing = {concept.name: concept for concept in Concept.objects.filter(world=world)}
        # Hand-made concepts (and hand-corrected kinds) stay; found names are added.
        names |= set(existing) | set(known)
        pattern = _mention_pattern(names)
        links: dict[str, set[int]] = defaultdict(set)
        ties: Counter[tuple[str, str]] = Counter()
        events: list[tuple[int, ExtractedEvent, set[str]]] = []
        seen: set[tuple[int | None, str]] = set()
        for pk, text in chunks:
            for sentence in _sentences(text):
                mentioned = set(pattern.findall(sentence)) if pattern else set()
                for name in mentioned:
                    links[name].add(pk)
                for pair in itertools.combinations(sorted(mentioned), 2):
                    ties[pair] += 1
            for event in lore_events(text):
                if (event.year, event.description) in seen:
                    continue  # overlapping passages repeat a sentence
                seen.add((event.year, event.description))
                events.append((pk, event, set(pattern.findall(event.description)) if pattern else set()))
        created = [
            Concept(world=world, name=name, kind=known.get(name) or concept_kind(name))
            for name in sorted(links)
            if name not in existing
        ]
        Concept.objects.bulk_create(created)
        concepts = {concept.name: concept for concept in Concept.objects.filter(world=world)}
        # Found concepts nobody mentions any more go; designers' conditions keep theirs.
        orphans = [
            concept.pk for name, concept in concepts.items() if name not in links and not concept.conditions
        ]
        Concept.objects.filter(pk__in=orphans).delete()
        Link = Concept.chunks.through
        Link.objects.filter(concept__world=world).delete()
        Link.objects.bulk_create(
            Link(concept_id=concepts[name].pk, lorechunk_id=pk) for name, pks in links.items() for pk in pks
        )
        LoreEvent.objects.filter(world=world).delete()
        made = LoreEvent.objects.bulk_create(
            LoreEvent(world=world, year=event.year, description=event.description, chunk_id=pk)
            for pk, event, _ in events
        )
        EventLink = LoreEvent.concepts.through
        EventLink.objects.bulk_create(
            EventLink(loreevent_id=row.pk, concept_id=concepts[name].pk)
            for row, (_, _, mentioned) in zip(made, events, strict=True)
            for name in mentioned
        )
        ConceptRelation.objects.filter(world=world, kind=MENTIONED_WITH).delete()
        ConceptRelation.objects.bulk_create(
            ConceptRelation(
                world=world, source=concepts[a], target=concepts[b], kind=MENTIONED_WITH, weight=weight
            )
            for (a, b), weight in ties.items()
        )
    result = GraphResult(len(links), len(created), len(orphans), len(events), len(ties))
    logger.info("lore graph of %s: %s", world.slug, result)
    return result
