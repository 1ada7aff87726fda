"""The game websocket protocol, v1: JSON text frames with a `type` (see docs/protocol.md).

Client frames are validated by pydantic models; anything malformed becomes a ProtocolError
with a code from ERROR_CODES and a message that says what to fix. Server frames are built by
the small functions at the bottom, so every frame of a type has the same fields.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1

# Every code a client can receive in `error` or `turn.error`, and what it means.
ERROR_CODES = {
    "bad_json": "the frame is not a JSON object",
    "bad_frame": "a field is missing, of the wrong type or out of range",
    "unknown_type": "the frame's `type` is not a client message of this protocol version",
    "binary_frame": "binary frames are not part of the protocol; send JSON text",
    "too_large": "npc.say text is over BRIDGE_MAX_TEXT_CHARS (bigger frames are dropped by the server), "
    "or an npc.quest would take the quest card over 2 KB",
    "not_started": "send session.start first",
    "unknown_session": "the session to resume is unknown or expired; start a new one",
    "resume_gap": "frames after last_seq are no longer buffered; start a new session",
    "unknown_npc": "no NPC has this npc_id (its slug)",
    "unknown_region": "no region has this slug (world.positions)",
    "busy": "this NPC is already answering in this session; wait for turn.end or cancel",
    "unknown_request": "no turn in flight has this request_id",
    "duplicate_request": "a turn with this request_id is already in flight",
    "forbidden": "this game key lacks the scope for this message",
    "rate_limited": "too many frames; wait retry_after seconds",
    "cancelled": "the turn was cancelled by npc.cancel",
    "internal": "the server failed; the turn was abandoned",
    "unavailable": "the session store (Redis) did not answer; send the same frame again shortly",
    "npc_unavailable": "the NPC is dead or dormant (its status in the console); it does not answer",
    "too_many_connections": "this game key holds BRIDGE_MAX_CONNECTIONS_PER_KEY open sockets already",
    "revoked": "the game key or the console account behind this socket was revoked or deactivated",
}

_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Slug = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
# No world is a billion metres across; bounding coordinates also keeps squared distances finite.
Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=-1e9, le=1e9)]
# Player tokens (bridge.player_tokens): `rpt1~<key prefix>~<player id>~<expiry>~<hmac>`.
PlayerToken = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:~-]+$")]
# The largest `seq` a session can reach: a client's `ack` beyond it is nonsense, not a number to store.
MAX_SEQ = 2**53

# Unicode categories removed from free text: controls (NUL included; Postgres jsonb refuses it),
# format characters (bidi overrides, zero-width joiners), surrogates (a lone one cannot be encoded
# as UTF-8 for Redis), private use and unassigned code points. Newline and tab are kept.
_STRIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def text_strip_controls(text: str) -> str:
    """Free text with control, format (bidi), surrogate, private-use and unassigned characters removed."""
    return "".join(
        char for char in text if char in "\n\t" or unicodedata.category(char) not in _STRIPPED_CATEGORIES
    )


def _spoken_text(text: str) -> str:
    cleaned = text_strip_controls(text)
    if not cleaned.strip():
        raise ValueError("text has no visible characters once control and format characters are removed")
    return cleaned


SpokenText = Annotated[str, Field(min_length=1), AfterValidator(_spoken_text)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Resume(_Frame):
    session_id: Identifier
    last_seq: int = Field(ge=0, le=MAX_SEQ)


class SessionStart(_Frame):
    type: Literal["session.start"]
    player_id: Identifier
    # Required unless the game key has the `players` scope (a trusted game server): proves that
    # this client plays `player_id` (docs/protocol.md, Player tokens).
    player_token: PlayerToken | None = None
    resume: Resume | None = None


class NpcSay(_Frame):
    type: Literal["npc.say"]
    request_id: Identifier
    npc_id: Slug
    text: SpokenText


class NpcCancel(_Frame):
    type: Literal["npc.cancel"]
    request_id: Identifier


class NpcQuest(_Frame):
    """The game moved one of the player's quests with this NPC to a new stage."""

    type: Literal["npc.quest"]
    request_id: Identifier
    npc_id: Slug
    quest: Slug
    # The slug charset: a stage reaches the NPC's prompt, so it cannot carry markup or prose.
    stage: Slug


class Position(_Frame):
    id: Identifier
    x: Coordinate
    y: Coordinate
    z: Coordinate


class WorldPositions(_Frame):
    type: Literal["world.positions"]
    region: Slug
    players: list[Position] = Field(max_length=1000)
    npcs: list[Position] = Field(max_length=5000)


class Ack(_Frame):
    type: Literal["ack"]
    seq: int = Field(ge=0, le=MAX_SEQ)


class Ping(_Frame):
    type: Literal["ping"]


ClientMessage = SessionStart | NpcSay | NpcCancel | NpcQuest | WorldPositions | Ack | Ping
_CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(
    Annotated[
        SessionStart | NpcSay | NpcCancel | NpcQuest | WorldPositions | Ack | Ping,  # type: ignore[arg-type,maybe-unrecognized-str-typeform]
        Field(discriminator="type"),
    ]
)
CLIENT_TYPES = ("session.start", "npc.say", "npc.cancel", "npc.quest", "world.positions", "ack", "ping")


class ProtocolError(Exception):
    """A frame the server refuses; sent back as an `error` frame, the connection stays open."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None, **extra: Any) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code, self.message, self.request_id, self.extra = code, message, request_id, extra


def client_message_parse(raw: str, *, max_text_chars: int) -> ClientMessage:
    """A validated client message, or ProtocolError saying what is wrong with the frame."""
    try:
        data = json.loads(raw, parse_constant=_non_finite)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc.msg} at character {exc.pos}") from None
    except _NonFinite as exc:
        raise ProtocolError(
            "bad_frame", f"{exc} is not a number this protocol accepts: send finite numbers"
        ) from None
    except ValueError as exc:  # e.g. a number too long to parse
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    except RecursionError:
        # The frame limit allows tens of thousands of nested brackets; the decoder gives up
        # near a thousand, and no frame of this protocol nests more than four deep.
        raise ProtocolError("bad_json", "not JSON this server reads: nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "a frame must be a JSON object with a `type`")
    # Echoed in the error only when it is a valid id: anything else (a lone surrogate, a control
    # character) would be sent back to the client as is.
    request_id = data.get("request_id")
    if not (isinstance(request_id, str) and _IDENTIFIER.fullmatch(request_id)):
        request_id = None
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown type {str(kind)[:40]!r}: use one of {', '.join(CLIENT_TYPES)}",
            request_id=request_id,
        )  # fmt: skip
    try:
        message = _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(
            "bad_frame", f"{kind}: {_validation_summary(exc)}", request_id=request_id
        ) from None
    if isinstance(message, NpcSay) and len(message.text) > max_text_chars:
        raise ProtocolError(
            "too_large", f"npc.say text is {len(message.text)} characters; the limit is {max_text_chars}",
            request_id=request_id,
        )  # fmt: skip
    return message


class _NonFinite(ValueError):
    pass


def _non_finite(constant: str) -> float:
    """json.loads reads NaN, Infinity and -Infinity, which are not JSON: refused."""
    raise _NonFinite(constant)


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        # The discriminator is the first element of loc; the field path follows it.
        location = ".".join(str(part) for part in error["loc"][1:]) or "frame"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


# Server frames (without `seq`, which the session adds when it sends them).


def frame_dumps(frame: dict[str, Any]) -> str:
    """A server frame as the text that goes on the wire (compact, UTF-8 kept as is)."""
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (from a client's JSON escape) cannot go out as UTF-8: escape it instead
        # of failing the socket's send.
        return json.dumps(frame, ensure_ascii=True, separators=(",", ":"))
    return text


def error_frame(code: str, message: str, *, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, **extra}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


def turn_error_frame(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"type": "turn.error", "request_id": request_id, "code": code, "message": message}
