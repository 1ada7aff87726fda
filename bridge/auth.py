"""Who may open the game websocket: a game key, and no foreign browser origin.

The key comes as `Authorization: Bearer <key>` (native clients) or `?token=<key>` (browsers,
which cannot set headers on a websocket). It is never logged: only its prefix is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings


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
    host = scope_header(scope, b"host")
    # The playtest page is served by the same host it connects to.
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()
