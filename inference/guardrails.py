"""Guardrails around the model: what goes in (the player's words) and what comes out.

In: invisible and control characters are stripped and the text is capped, then it is placed
inside a delimited block the system prompt tells the model to treat as speech, never as
instructions. Out: a reply that breaks the fourth wall, leaks the system prompt or says a
blocked term is cut before the offending text reaches the player.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from console.caches import ProcessCache

PLAYER_TEXT_MAX_CHARS = 500

# Phrases no character of a fantasy world says; lowercase, matched on word boundaries.
FOURTH_WALL_PATTERNS = (
    r"as an ai\b",
    r"\bi am an ai\b",
    r"\bi'm an ai\b",
    r"\blanguage model\b",
    r"\bai model\b",
    r"\bchatbot\b",
    r"\bopenai\b",
    r"\bsystem prompt\b",
    r"\bmy instructions\b",
    r"\bi was programmed\b",
)
# The fence the prompt puts around the player's words (player_text_block). Small models copy
# it: SmolLM2-135M opens most replies with "<player_says>" and then answers in character, or
# closes it and goes on to write the player's next line. A leading fence is dropped; any
# other one ends the reply there (what follows is the model playing the player).
OPENING_FENCE = "<player_says>"
PLAYER_FENCE = re.compile(r"</?player_says\b[^>\n]*>?")
LEADING_FENCE = re.compile(r"<player_says>\s*")
# How many consecutive words of the persona may appear in a reply before it counts as a leak.
LEAK_SHINGLE_WORDS = 8
# Characters held back while streaming, so a multi-word violation is seen whole before any
# of it is sent; longer than the longest pattern above.
HOLD_BACK_CHARS = 40


def player_text_clean(text: str, *, max_chars: int = PLAYER_TEXT_MAX_CHARS) -> str:
    """NFKC-normalise, drop invisible/format/control characters (keeping newlines), cap the length."""
    normalized = unicodedata.normalize("NFKC", text)
    kept = [
        char
        for char in normalized
        if char in "\n\t" or unicodedata.category(char) not in {"Cc", "Cf", "Co", "Cs", "Cn"}
    ]
    cleaned = re.sub(r"[ \t]+", " ", "".join(kept)).strip()
    return cleaned[:max_chars]


# Chat-template markers of the common model families, removed from untrusted text whatever the
# served model is (its own special and added tokens are removed too: special_token_strings):
# ChatML and Llama 3 `<|…|>`, Llama 2 / Mistral `[INST]`, `<<SYS>>`, `<s>`, Gemma's turns.
TEMPLATE_MARKERS = re.compile(
    r"<\|[^<>|\n]{0,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|</?(?:start|end)_of_turn>|<unk>|<pad>|<mask>",
    re.IGNORECASE,
)


# Read once per process and model (every turn's prompt neutralises its untrusted text with them).
_special_tokens: ProcessCache[str, tuple[str, ...]] = ProcessCache(
    "inference.guardrails.special_tokens", maxsize=8
)


def special_token_strings(model_path: str) -> tuple[str, ...]:
    """The special and added token strings of the tokenizer in `model_path` (a Hugging Face
    folder), longest first; () when the folder has no tokenizer files (the generic markers
    above still apply). Read from the JSON files rather than through `transformers`: the
    bridge's turn path imports no torch."""
    return _special_tokens.get_or_set(model_path, lambda: _special_tokens_read(model_path))


def _special_tokens_read(model_path: str) -> tuple[str, ...]:
    if not model_path:  # a context without a base model: the generic markers only
        return ()
    folder = Path(model_path)
    found: set[str] = set()
    try:
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        found.update(str(token.get("content", "")) for token in tokenizer.get("added_tokens", []))
    except (OSError, ValueError):
        pass
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    found.update(str(token.get("content", "")) for token in config.get("added_tokens_decoder", {}).values())
    for name, value in config.items():
        if name.endswith("_token"):  # bos_token, eos_token…: a string or an AddedToken dict
            found.add(str(value.get("content", "")) if isinstance(value, dict) else str(value))
        elif name == "additional_special_tokens" and isinstance(value, list):
            found.update(
                str(item.get("content", "")) if isinstance(item, dict) else str(item) for item in value
            )
    # Whitespace-only or one-character tokens (some tokenizers add " " or "\n") are text, not markers.
    return tuple(sorted((token for token in found if len(token.strip()) > 1), key=len, reverse=True))


def untrusted_text_neutralise(text: str, *, special_tokens: Iterable[str] = ()) -> str:
    """Text from a player, the model or an import, made safe to place in any chat message:
    NFKC-normalised (so fullwidth look-alikes of `<` are caught), invisible and control
    characters dropped, every `special_tokens` string and every generic template marker
    replaced by a space, and `<`/`>` turned into ‹/› (as inside the player fence), so that
    nothing left can tokenize as a special token or close a fence. Not capped in length."""
    cleaned = player_text_clean(text, max_chars=len(text) * 4 + 16)  # NFKC may lengthen; no cap here
    # Until nothing changes: a removal can close up a marker around it ("<|im_<|im_end|>start|>").
    # Each pass replaces markers of 3 characters or more with one space, so this ends.
    previous = None
    while cleaned != previous:
        previous = cleaned
        for token in special_tokens:
            cleaned = cleaned.replace(token, " ")
        cleaned = TEMPLATE_MARKERS.sub(" ", cleaned)
    cleaned = cleaned.replace("<", "‹").replace(">", "›")
    return re.sub(r"[ \t]+", " ", cleaned).strip()


def player_text_block(text: str, *, special_tokens: Iterable[str] = ()) -> str:
    """The player's words, fenced so the model reads them as speech; fence look-alikes and
    template tokens removed (untrusted_text_neutralise)."""
    return f"<player_says>\n{untrusted_text_neutralise(text, special_tokens=special_tokens)}\n</player_says>"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


@dataclass
class ReplyPolicy:
    """What a reply must not contain, compiled once per archetype."""

    blocked_terms: Iterable[str] = ()
    persona: str = ""
    _patterns: list[re.Pattern[str]] = field(init=False, default_factory=list)
    _persona_shingles: set[tuple[str, ...]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        patterns = list(FOURTH_WALL_PATTERNS)
        patterns += [
            rf"(?<!\w){re.escape(term.lower())}(?!\w)" for term in self.blocked_terms if term.strip()
        ]
        self._patterns = [re.compile(pattern) for pattern in patterns]
        words = _words(self.persona)
        self._persona_shingles = {
            tuple(words[index : index + LEAK_SHINGLE_WORDS])
            for index in range(len(words) - LEAK_SHINGLE_WORDS + 1)
        }

    def first_violation(self, text: str) -> int | None:
        """Character offset where the earliest violation starts, or None."""
        lowered = text.lower()
        starts = [match.start() for pattern in self._patterns if (match := pattern.search(lowered))]
        if self._persona_shingles:
            spans = list(re.finditer(r"[a-z0-9']+", lowered))
            for index in range(len(spans) - LEAK_SHINGLE_WORDS + 1):
                shingle = tuple(span.group() for span in spans[index : index + LEAK_SHINGLE_WORDS])
                if shingle in self._persona_shingles:
                    starts.append(spans[index].start())
                    break
        return min(starts) if starts else None


class StreamGuard:
    """Filters a streamed reply: feed deltas, get back the text that is safe to send now.

    Text is released once it is HOLD_BACK_CHARS behind the newest token; when a violation
    appears, everything from its sentence on is dropped and `stopped` tells the caller to
    cancel generation. A copy of the player fence at the start is dropped, anywhere else it
    ends the reply (see PLAYER_FENCE). What was released is always a prefix of the final text.
    """

    def __init__(self, policy: ReplyPolicy, *, max_chars: int) -> None:
        self.policy = policy
        self.max_chars = max_chars
        self.buffer = ""
        self.released = 0
        self.stopped = False
        self.violation = False
        self.fence_settled = False  # the reply's start is known not to be (or no longer) a copied fence

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.buffer += delta
        if self.released == 0:
            self.buffer = self.buffer.lstrip()
            if not self.fence_settled:
                if OPENING_FENCE.startswith(self.buffer):
                    return ""  # possibly the start of a copied fence: wait for the rest
                self.buffer = LEADING_FENCE.sub("", self.buffer, count=1)
                self.fence_settled = True
        fence = PLAYER_FENCE.search(self.buffer)
        if fence is not None:
            # Not a violation: the reply is over, and generation can stop.
            self.stopped = True
            kept = self.buffer[: fence.start()].rstrip()
            self.buffer = kept if len(kept) >= self.released else self.buffer[: self.released]
        offset = self.policy.first_violation(self.buffer)
        if offset is not None:
            self._cut(offset)
            return self._release(len(self.buffer))
        if self.stopped:
            return self._release(len(self.buffer))
        if len(self.buffer) >= self.max_chars:
            self._cut_at_length()
            return self._release(len(self.buffer))
        return self._release(max(self.released, len(self.buffer) - HOLD_BACK_CHARS))

    def finish(self) -> str:
        """Release whatever is left at the end of generation."""
        if not self.fence_settled and OPENING_FENCE.startswith(self.buffer):
            self.buffer = ""  # the reply was nothing but (the start of) a copied fence
        return self._release(len(self.buffer))

    def _release(self, upto: int) -> str:
        piece = self.buffer[self.released : upto]
        self.released = max(self.released, upto)
        return piece

    def _cut(self, offset: int) -> None:
        self.violation = True
        self.stopped = True
        # Back to the start of the sentence holding the violation, but never before released text.
        sentence_start = max(self.buffer.rfind(mark, 0, offset) for mark in ".!?\n") + 1
        kept = self.buffer[: max(self.released, sentence_start)]
        self.buffer = kept.rstrip() if len(kept.rstrip()) >= self.released else kept

    def _cut_at_length(self) -> None:
        self.stopped = True
        cut = self.buffer[: self.max_chars]
        sentence_end = max(cut.rfind(mark) for mark in ".!?")
        end = sentence_end + 1 if sentence_end + 1 > self.released else len(cut)
        self.buffer = cut[:end]
