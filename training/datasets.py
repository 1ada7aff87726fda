"""Datasets: chat-format JSONL per archetype and task, curated from what the archetype already
is (persona, barks, allowed actions), what designers wrote (example exchanges), the lore it may
know, and turns designers approved from the archive.

Every example is shaped exactly as the turn path sends it (inference.prompts: the same system
message, the same <player_says> block, the same choice question and JSON answer), so an adapter
learns the prompts it will be served. Lore examples carry their passage in the lore slot and
answer from it: the adapter learns to use what retrieval gives it, not to memorise a world.

A dataset is written to a fresh folder (train.jsonl, heldout.jsonl, manifest.json) and only then
registered; its manifest holds each file's sha256 and every example's source, and training
refuses a dataset whose files changed (`dataset_verify`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.lore.gating import gate_q
from console.models import NPC, AdapterTask, Archetype, Concept, LoreChunk, LoreEvent
from inference.base_models import file_sha256
from inference.prompts import PromptParts, Turn, prompt_assemble
from memory.models import MemoryEventKind
from training.models import Dataset, ExampleExchange, TranscriptApproval

logger = logging.getLogger(__name__)

# Tasks whose adapter answers with a choice (vLLM structured output), and the question the turn
# asks (inference.turn.play.structured_choices); the others answer in voice.
CHOICE_TASKS: dict[str, tuple[str, str]] = {
    AdapterTask.ACTION_POLICY: ("action", "What does {name} do now?"),
    AdapterTask.EMOTIONAL_RESPONSE: ("emotion", "How does {name} feel hearing this?"),
}
# What a player says when a bark fits (the archetype's barks become in-voice replies). None is a
# line of the eval's conversation (training.eval.harness.CONVERSATION), whose replies are scored.
BARK_CUES = {
    "greet": ["Hello there.", "Good evening to you.", "Greetings, stranger.", "And who are you, then?"],
    "farewell": ["Farewell, then.", "I must go now.", "Goodbye, and good night."],
    "alert": ["I have come to destroy you!", "Stand aside or die!", "Get back, creature!"],
    "hurt": ["(strikes you with a silvered blade)", "Take that!", "(throws holy water at you)"],
    "idle": ["...", "(waits in silence)", "Hm."],
}
# What a player says (or does) when an action is the natural answer; other actions are cued
# by their own description, as a situation.
ACTION_CUES = {
    "talk": ["What can you tell me of this place?", "I would like a word with you.", "Tell me a story."],
    "idle": ["(says nothing and looks away)", "...", "(busies themselves with their pack)"],
    "attack": ["Die, monster!", "(draws a sword and charges)", "I will put you down for good."],
    "follow": ["Follow me.", "Come with me, quickly.", "Walk with me a while."],
    "flee": ["(raises a blazing torch)", "(holds up a holy relic that burns with light)"],
    "wander": ["(walks past without a word)", "(is nowhere to be seen)"],
}
LORE_QUESTIONS = ("What do you know of {name}?", "Tell me about {name}.", "Have you heard of {name}?")
EVENT_QUESTIONS = ("What happened in the year {year}?", "Tell me what happened in {year}.")
MAX_LORE_EXAMPLES = 240
# Lore answers per voice example in a dialogue dataset. At one each (half the dataset reciting
# passages in flat prose) the vampire's adapter sounded less like the vampire than the base model
# did (persona 0.63 against 0.88).
LORE_PER_VOICE = 0.5
# How much of a passage a lore example puts in the lore slot.
LORE_SLOT_CHARS = 600
# Earlier exchanges put in the history slot of a voice example (at most).
HISTORY_MAX = 4
# Every allowed action appears at least this often in an action dataset.
ACTION_EXAMPLES_MIN = 4


class DatasetError(Exception):
    """A dataset that cannot be built or trusted; the message says what to fix."""


@dataclass(frozen=True)
class Example:
    messages: list[dict[str, str]]
    source: str  # "exchange:12", "transcript:<event id>", "bark:greet", "lore:<chunk id>", "action:<name>"

    def line(self) -> str:
        return json.dumps({"messages": self.messages, "source": self.source}, ensure_ascii=False)


class Prompter:
    """Serving-shaped messages for an archetype, rotating over its NPCs' cards so an adapter
    learns the archetype, not one NPC."""

    def __init__(self, archetype: Archetype) -> None:
        self.archetype = archetype
        self.npcs = list(NPC.objects.filter(archetype=archetype).select_related("region").order_by("slug"))
        self.turn = 0

    def card(self, npc_index: int | None = None) -> tuple[str, str]:
        """The next NPC's name and card (or NPC `npc_index`'s, without moving on)."""
        archetype = self.archetype
        if npc_index is None:
            npc_index, self.turn = self.turn, self.turn + 1
        npc = self.npcs[npc_index % len(self.npcs)] if self.npcs else None
        lines = [
            f"Your name is {npc.name}. You are in {npc.region.name}."
            if npc
            else f"You are a {archetype.name}.",
            npc.backstory if npc else "",
            f"How you speak: {archetype.speech_style}" if archetype.speech_style else "",
            f"Words you favour: {', '.join(archetype.lexicon)}" if archetype.lexicon else "",
        ]
        return (npc.name if npc else archetype.name), "\n".join(line for line in lines if line)

    def messages(
        self, player: str, *, lore: str = "", history: list[Turn] | None = None, npc_index: int | None = None
    ) -> tuple[str, list[dict[str, str]]]:
        name, card = self.card(npc_index)
        prompt = prompt_assemble(
            PromptParts(
                persona=self.archetype.persona,
                subfaction="",
                npc_card=card,
                memory="",
                lore=lore,
                history=history or [],
                player_text=player,
            ),  # fmt: skip
            budget_tokens=1_000_000,
            count=len,  # no budget to keep: dataset prompts are never cut
        )
        return name, prompt.messages


def _reply_example(
    prompter: Prompter,
    player: str,
    reply: str,
    source: str,
    *,
    lore: str = "",
    history: list[Turn] | None = None,
) -> Example:
    _, messages = prompter.messages(player, lore=lore, history=history)
    return Example([*messages, {"role": "assistant", "content": reply}], source)


def _voice_examples(
    prompter: Prompter, pairs: list[tuple[str, str, str]], rng: random.Random
) -> list[Example]:
    """In-voice replies; every other one follows a few earlier exchanges in the history slot.

    The turn path sends the last turns of a conversation with every prompt. A first pilot
    trained without history, and its adapter repeated its previous reply when it saw one: an
    adapter must learn to answer the new line with the old ones in view.
    """
    examples = []
    for index, (player, reply, source) in enumerate(pairs):
        others = [pair for pair in pairs if pair[0] != player]
        history = []
        if index % 2 and others:
            picked = rng.sample(others, min(len(others), rng.randint(1, HISTORY_MAX)))
            history = [Turn(player=other_player, npc=other_reply) for other_player, other_reply, _ in picked]
        examples.append(_reply_example(prompter, player, reply, source, history=history))
    return examples


def _choice_example(prompter: Prompter, task: str, player: str, value: str, source: str) -> Example:
    kind, question = CHOICE_TASKS[task]
    name, messages = prompter.messages(player)
    asked = [*messages, {"role": "user", "content": f"{question.format(name=name)} Answer with JSON."}]
    return Example([*asked, {"role": "assistant", "content": json.dumps({kind: value})}], source)


def _sentence_naming(text: str, needle: str) -> str:
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if needle in sentence:
            return sentence.strip()
    return ""


_MARKUP = re.compile(r"\*\*|(?<!\w)[*_](?=\w)|(?<=\w)[*_](?!\w)|^\s*(?:[-*+]|#+)\s+", re.MULTILINE)


def _spoken(sentence: str) -> str:
    """A passage's sentence as a character says it: no Markdown emphasis, bullets or heading
    marks (an adapter that learnt to answer "**1190** - …" would say the asterisks)."""
    return " ".join(_MARKUP.sub("", sentence).split())


def _lore_examples(prompter: Prompter, rng: random.Random, *, most: int = MAX_LORE_EXAMPLES) -> list[Example]:
    """Questions about the concepts and events the archetype may know, each answered from the
    passage in its lore slot (the lore graph gives the names and years to ask about)."""
    archetype = prompter.archetype
    chunks = LoreChunk.objects.filter(gate_q(archetype=archetype.slug), world=archetype.world)
    allowed = dict(chunks.values_list("pk", "text"))
    asked: dict[str, tuple[int, str]] = {}  # question -> (chunk, the sentence that answers it)
    named: set[str] = set()
    # One answer per question: a concept named in several passages is asked about from the
    # first (a question with two answers teaches neither, and cannot be scored).
    for name, chunk in (
        Concept.objects.filter(world=archetype.world, chunks__in=list(allowed))
        .order_by("name", "chunks")
        .values_list("name", "chunks")
    ):
        sentence = _sentence_naming(allowed[chunk], name)
        if name not in named and len(sentence.split()) >= 6:
            named.add(name)
            asked[rng.choice(LORE_QUESTIONS).format(name=name)] = (chunk, sentence)
    for year, description, chunk in (
        LoreEvent.objects.filter(world=archetype.world, chunk__in=list(allowed), year__isnull=False)
        .order_by("year", "chunk")
        .values_list("year", "description", "chunk")
    ):
        question = EVENT_QUESTIONS[(year or 0) % len(EVENT_QUESTIONS)].format(year=year)  # year is set
        asked.setdefault(question, (chunk, description))
    questions = sorted(asked)
    rng.shuffle(questions)
    examples = []
    for question in questions[:most]:
        chunk, sentence = asked[question]
        text = allowed[chunk]
        # The slot holds LORE_SLOT_CHARS of the passage around the answer: an answer the
        # prompt does not hold would teach the adapter to make facts up.
        start = max(0, min(text.find(sentence) - LORE_SLOT_CHARS // 3, len(text) - LORE_SLOT_CHARS))
        lore = f"- {text[start : start + LORE_SLOT_CHARS]}"
        # The passage's own sentence, unadorned: a first pilot that prefixed a lexicon word
        # ("Vintage... …") learnt to open every reply with it and then loop on it.
        examples.append(_reply_example(prompter, question, _spoken(sentence), f"lore:{chunk}", lore=lore))
    return examples


def dataset_examples(*, archetype: Archetype, task: str, seed: int = 0) -> list[Example]:
    """Every example for an archetype's task, in a stable order for a given seed."""
    if task not in AdapterTask.values:
        raise DatasetError(f"unknown task {task!r}: use one of {', '.join(AdapterTask.values)}")
    rng = random.Random(f"{archetype.slug}:{task}:{seed}")
    prompter = Prompter(archetype)
    examples: list[Example] = []
    exchanges = ExampleExchange.objects.filter(archetype=archetype, task=task)
    approved = TranscriptApproval.objects.filter(
        archetype=archetype, event__kind=MemoryEventKind.TURN
    ).values_list("event__event_id", "event__payload")
    if task in CHOICE_TASKS:
        kind, _ = CHOICE_TASKS[task]
        options = archetype.action_names if kind == "action" else list(archetype.emotions)
        chosen: list[tuple[str, str, str]] = []  # (player, choice, source)
        for exchange in exchanges:
            value = exchange.action if kind == "action" else exchange.emotion
            if value in options:
                chosen.append((exchange.player, value, f"exchange:{exchange.pk}"))
        chosen += [
            (payload["player"], payload[kind], f"transcript:{event_id}")
            for event_id, payload in approved
            if payload.get(kind) in options and payload.get("player")
        ]
        if kind == "action":
            for action in archetype.allowed_actions:
                name = action["name"]
                cues = ACTION_CUES.get(name) or [f"({action['description']})"]
                chosen += [(cue, name, f"action:{name}") for cue in cues]
                # A rare action is seen again under other NPCs' cards: a first pilot that saw
                # mist_form twice answered "mist", half its name.
                seen = [pair for pair in chosen if pair[1] == name]
                chosen += [seen[index % len(seen)] for index in range(ACTION_EXAMPLES_MIN - len(seen))]
        else:
            chosen += [(cue, "neutral", "emotion:neutral") for cue in BARK_CUES["greet"]]
        return [_choice_example(prompter, task, player, value, source) for player, value, source in chosen]
    pairs = [
        (exchange.player, exchange.reply, f"exchange:{exchange.pk}")
        for exchange in exchanges
        if exchange.reply
    ]
    pairs += [
        (payload["player"], payload["npc"], f"transcript:{event_id}")
        for event_id, payload in approved
        if payload.get("player") and payload.get("npc")
    ]
    if task in (AdapterTask.DIALOGUE_STYLE, AdapterTask.PERSONALITY):
        for situation, lines in sorted(archetype.barks.items()):
            cues = BARK_CUES.get(situation, BARK_CUES["idle"])
            pairs += [
                (cues[index % len(cues)], line, f"bark:{situation}") for index, line in enumerate(lines)
            ]
    examples += _voice_examples(prompter, pairs, rng)
    if task == AdapterTask.WORLD_KNOWLEDGE:
        examples += _lore_examples(prompter, rng)
    elif task == AdapterTask.DIALOGUE_STYLE and archetype.content_policy.get("lore_in_dialogue", False):
        # Lore is the world_knowledge adapter's to learn, and reaches every turn through the lore
        # slot; a designer may mix it into the voice ("lore_in_dialogue": true). Four pilots
        # that did lost the voice: 200 lore answers to 30 voice lines recited passages, and
        # even one lore answer per two voice lines left the vampire's adapter further from its
        # persona than the base model (0.61 against 0.71 over 28 replies), lore accuracy 0 both.
        # Fewer than the voice examples (LORE_PER_VOICE) when mixed in.
        examples += _lore_examples(prompter, rng, most=max(round(LORE_PER_VOICE * len(examples)), 16))
    return examples


def _heldout(example: Example) -> bool:
    """Held out by the player's words, so one question never lands on both sides. (The player's
    words, not the last user message: a choice example ends with the choice question, the same
    for every example of an NPC, which held out all of an archetype's actions or none.)"""
    users = [m["content"] for m in example.messages if m["role"] == "user"]
    player = next((text for text in reversed(users) if "<player_says>" in text), users[-1])
    digest = hashlib.sha256(f"{example.source.split(':')[0]}:{player}".encode()).digest()
    return digest[0] / 256 < settings.DATASET_HELDOUT_SHARE


def _manifest_sha256(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


MIN_EXAMPLES = 8


def dataset_check(*, archetype: Archetype, task: str) -> list[Example]:
    """The examples a dataset would hold, or DatasetError saying what to add."""
    examples = dataset_examples(archetype=archetype, task=task)
    if len(examples) < MIN_EXAMPLES:
        raise DatasetError(
            f"{archetype.slug} {task}: only {len(examples)} examples (at least {MIN_EXAMPLES} needed): "
            "add example exchanges in the archetype's admin page, barks, allowed actions or lore"
        )
    return examples


def dataset_build(*, archetype: Archetype, task: str) -> Dataset:
    """Build and register the next version of an archetype's dataset for `task`."""
    examples = dataset_check(archetype=archetype, task=task)
    train = [example for example in examples if not _heldout(example)]
    heldout = [example for example in examples if _heldout(example)]
    if not train:
        raise DatasetError(f"{archetype.slug} {task}: every example fell in the held-out share")
    version = (Dataset.objects.filter(archetype=archetype, task=task).order_by("-version").values_list(
        "version", flat=True).first() or 0) + 1  # fmt: skip
    folder = Path(settings.DATASETS_DIR) / archetype.slug / task / f"v{version}"
    if folder.exists():
        # No row names it (versions come from the rows): a leftover of a database that was reset.
        logger.warning("dataset folder %s has no row; replacing it", folder)
        shutil.rmtree(folder)
    staging = folder.with_name(f".v{version}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
            (staging / name).write_text("".join(example.line() + "\n" for example in rows), encoding="utf-8")
        manifest = {
            "archetype": archetype.slug,
            "task": task,
            "version": version,
            "created_at": timezone.now().isoformat(),
            "files": {name: file_sha256(staging / name) for name in ("train.jsonl", "heldout.jsonl")},
            "examples": {"train": len(train), "heldout": len(heldout)},
            "provenance": dict(Counter(example.source.split(":")[0] for example in examples)),
        }
        (staging / "manifest.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8"
        )
        with transaction.atomic():
            dataset = Dataset.objects.create(
                archetype=archetype, task=task, version=version, path=str(folder), manifest=manifest,
                manifest_sha256=_manifest_sha256(manifest), train_examples=len(train),
                heldout_examples=len(heldout),
            )  # fmt: skip
            staging.rename(folder)  # the row commits only if the folder is in place
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "dataset %s: %d train, %d held out, %s", dataset, len(train), len(heldout), manifest["provenance"]
    )
    return dataset


def dataset_verify(dataset: Dataset) -> Path:
    """The dataset's folder, after checking its manifest and files against the registry."""
    folder = Path(dataset.path)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"dataset {dataset}: manifest unreadable ({exc}); rebuild the dataset") from exc
    if _manifest_sha256(manifest) != dataset.manifest_sha256:
        raise DatasetError(
            f"dataset {dataset}: manifest.json changed since it was built; rebuild the dataset"
        )
    for name, expected in manifest["files"].items():
        path = folder / name
        actual = file_sha256(path) if path.exists() else "missing"
        if actual != expected:
            raise DatasetError(
                f"dataset {dataset}: {name} does not match its manifest (sha256 {actual[:12]}…, expected "
                f"{expected[:12]}…); it was edited or damaged: rebuild the dataset"
            )
    return folder


def dataset_read(folder: Path, name: str = "train.jsonl") -> list[list[dict[str, str]]]:
    """The chat examples (message lists) of a verified dataset file."""
    return [example.messages for example in dataset_examples_read(folder, name)]


def dataset_examples_read(folder: Path, name: str = "train.jsonl") -> list[Example]:
    """The examples of a verified dataset file, with their sources."""
    with (folder / name).open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Example(row["messages"], row["source"]) for row in rows]
