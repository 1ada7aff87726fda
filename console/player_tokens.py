"""Player tokens: a game server's signed statement "this client plays player P until time T".

A game server holds a game key with the `players` scope; the builds it hands to players (a
browser, a game client) hold only a key with `play` and one short-lived token for their own
player, so a build cannot speak as anyone else (docs/protocol.md, Player tokens).

    rpt1~<key prefix>~<player id>~<expires, unix seconds>~<hex HMAC-SHA256>

The HMAC is over everything before the last `~`, keyed with the key's *token key*:
HMAC-SHA256(game key secret, TOKEN_KEY_LABEL). A game server derives it from its secret and signs
tokens itself, with no round trip to Revenant; Revenant keeps the derived key (never the secret)
to check them. `~` is in neither a key prefix nor a player id, so the fields split unambiguously.

Plain functions, no Django: the reference client (bridge/client.py) and the console share them,
and a game server can copy these twenty lines into its own language.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOKEN_VERSION = "rpt1"
TOKEN_KEY_LABEL = b"revenant player tokens v1"
SEPARATOR = "~"


def player_token_key(secret: str) -> str:
    """The token key of a game key, from its secret (hex)."""
    return hmac.new(secret.encode(), TOKEN_KEY_LABEL, hashlib.sha256).hexdigest()


def player_token_sign(*, token_key: str, prefix: str, player_id: str, expires: int) -> str:
    """A token for `player_id` valid until `expires` (unix seconds)."""
    body = SEPARATOR.join((TOKEN_VERSION, prefix, player_id, str(int(expires))))
    signature = hmac.new(bytes.fromhex(token_key), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}{SEPARATOR}{signature}"


def player_token_for(*, secret: str, player_id: str, ttl_s: int, prefix_chars: int = 10) -> str:
    """What a game server runs: a token for `player_id`, valid `ttl_s` seconds, from its key's secret.

    `prefix_chars` is how much of the secret the console shows as the key's prefix (`rvk_` + 6).
    """
    return player_token_sign(
        token_key=player_token_key(secret),
        prefix=secret[:prefix_chars],
        player_id=player_id,
        expires=int(time.time()) + ttl_s,
    )


def player_token_fields(token: str) -> tuple[str, str, int, str] | None:
    """(prefix, player id, expires, signature) of a well-formed token, else None. Not verified."""
    parts = token.split(SEPARATOR)
    if len(parts) != 5 or parts[0] != TOKEN_VERSION or not parts[3].isdigit() or len(parts[3]) > 12:
        return None
    return parts[1], parts[2], int(parts[3]), parts[4]
