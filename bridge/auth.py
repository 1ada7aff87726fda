"""Who may open the game websocket: a game key, and no foreign browser origin.

The key comes as `Authorization: Bearer <key>` (native clients) or `?token=<key>` (browsers,
which cannot set headers on a websocket). It is never logged: only its prefix is.

The console's playtest page connects without a key: its user's session cookie identifies a
console user with the `console.playtest_npc` permission. That path needs an Origin equal to
the console's own host, so a foreign page cannot ride a designer's cookie (cross-site
websocket hijacking), and grants only the `play` scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model

from console.models import GameClientKey, GameKeyScope
from console.services.keys import PlayerTokenRefused, game_key_authenticate, player_token_verify

PLAYTEST_PERMISSION = "console.playtest_npc"


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a game socket."""

    owner: str  # "key:<pk>" or "user:<pk>": sessions are resumable only by their owner
    label: str  # for logs: a key's prefix or a username, never a secret
    scopes: frozenset[str]


def scope_header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def bearer_token(scope: dict[str, Any]) -> str | None:
    """The game key of a websocket handshake, from the header or the query string."""
    header = scope_header(scope, b"authorization")
    if header is not None:
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer":
            return None
        return token.strip() or None
    query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


def origin_allowed(scope: dict[str, Any]) -> bool:
    """No Origin (a native client), the console's own host, or one listed in BRIDGE_ALLOWED_ORIGINS."""
    origin = scope_header(scope, b"origin")
    if origin is None:
        return True
    if origin.rstrip("/") in {allowed.rstrip("/") for allowed in settings.BRIDGE_ALLOWED_ORIGINS}:
        return True
    return same_host_origin(scope)


def same_host_origin(scope: dict[str, Any]) -> bool:
    """The handshake's Origin names the host it was sent to: a page of the console itself."""
    origin, host = scope_header(scope, b"origin"), scope_header(scope, b"host")
    return origin is not None and host is not None and urlsplit(origin).netloc.lower() == host.lower()


def caller_authenticate(scope: dict[str, Any]) -> Caller | None:
    """The caller of a websocket handshake, or None when it has no valid credential.

    Synchronous (database queries): the consumer calls it through database_sync_to_async.
    """
    secret = bearer_token(scope)
    if secret is not None:
        key = game_key_authenticate(secret=secret)
        if key is None:
            return None
        return Caller(owner=f"key:{key.pk}", label=key.prefix, scopes=frozenset(key.scopes))
    user = scope.get("user")
    if (
        user is not None
        and user.is_authenticated
        and user.is_active
        and same_host_origin(scope)
        and user.has_perm(PLAYTEST_PERMISSION)
    ):
        return Caller(
            owner=f"user:{user.pk}", label=user.get_username(), scopes=frozenset({GameKeyScope.PLAY})
        )
    return None


def playtest_player_id(owner: str) -> str:
    """The only player id a console user's socket may use (the playtest page sends it)."""
    return "playtest-" + owner.replace(":", "-")  # "user:7" -> "playtest-user-7"


def player_claim_refusal(*, caller: Caller, player_id: str, player_token: str | None) -> str | None:
    """None when `caller` may start a session as `player_id`, else what is wrong (`forbidden`).

    A key with the `players` scope is a game server: it speaks for any player. Any other key needs
    a player token for this player id, signed by a game server's key (console.player_tokens). A
    console user plays `playtest-user-<pk>`, nobody else. Synchronous (database): called through
    database_sync_to_async, and only for callers that need a token checked.
    """
    if caller.owner.startswith("user:"):
        expected = playtest_player_id(caller.owner)
        if player_id != expected:
            return f"a console playtest plays {expected!r} only"
        return None
    if GameKeyScope.PLAYERS in caller.scopes:
        return None
    if player_token is None:
        return (
            "this key may only play the player its player token names: send session.start with "
            "player_token (signed by your game server; docs/protocol.md, Player tokens)"
        )
    try:
        player_token_verify(token=player_token, player_id=player_id)
    except PlayerTokenRefused as exc:
        return str(exc)
    return None


def caller_still_allowed(caller: Caller) -> bool:
    """Is the key still active, or the console user still active with the playtest permission?"""
    kind, _, pk = caller.owner.partition(":")
    if kind == "key":
        return GameClientKey.objects.filter(pk=pk, active=True).exists()
    user = get_user_model().objects.filter(pk=pk).first()
    return user is not None and user.is_active and user.has_perm(PLAYTEST_PERMISSION)
