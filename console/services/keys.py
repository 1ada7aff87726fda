"""Game client keys: create (the secret is returned once), authenticate, revoke."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import AbstractBaseUser, User
from django.db import transaction
from django.utils import timezone

from console.models import GameClientKey, GameKeyScope
from console.player_tokens import player_token_fields, player_token_key, player_token_sign

logger = logging.getLogger(__name__)

KEY_PREFIX = "rvk_"
# Writing last_used_at on every connection would put a database write on the connect path;
# once a minute is precise enough for "is this key still in use?".
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _secret_hash(secret: str) -> str:
    # sha256, not a slow password hash: the secret is 256 random bits, so brute force is
    # already hopeless, and a fast hash keeps authentication to one indexed lookup.
    return hashlib.sha256(secret.encode()).hexdigest()


def game_key_create(
    *, name: str, scopes: Iterable[str] | None = None, created_by: AbstractBaseUser | None = None
) -> tuple[GameClientKey, str]:
    """Create a key and return it with its secret; the secret is not stored and cannot be shown again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = GameClientKey(
        name=name.strip(),
        prefix=secret[: len(KEY_PREFIX) + 6],
        secret_hash=_secret_hash(secret),
        player_token_key=player_token_key(secret),
        # The model's default: one list of default scopes for the admin, this and the command.
        scopes=list(scopes) if scopes is not None else GameClientKey._meta.get_field("scopes").get_default(),
        created_by=created_by if isinstance(created_by, User) else None,
    )
    key.full_clean()
    key.save()
    return key, secret


def game_key_authenticate(*, secret: str) -> GameClientKey | None:
    """The active key for `secret`, or None. Records when the key was last used."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 128:
        return None
    key = GameClientKey.objects.filter(secret_hash=_secret_hash(secret), active=True).first()
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        GameClientKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def game_key_revoke(*, key: GameClientKey) -> None:
    """Deactivate the key; its open sockets are closed within seconds (after the commit)."""
    key.active = False
    key.save(update_fields=["active"])
    transaction.on_commit(lambda: caller_disconnect(owner=f"key:{key.pk}"))


# The channel-layer group of every socket a caller (a key or a console user) holds open: the
# bridge adds each socket to it, and a revocation tells the group to close.
def caller_group(owner: str) -> str:
    return "caller." + owner.replace(":", ".")


CALLER_REVOKED = "caller.revoked"


def caller_disconnect(*, owner: str) -> None:
    """Close every open game socket of `owner` ("key:<pk>" or "user:<pk>"), on every bridge process.

    Best effort: the bridge also re-checks its callers every BRIDGE_CALLER_RECHECK_S seconds, so a
    lost message (the channel layer drops at capacity) delays the close, it does not prevent it.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(caller_group(owner), {"type": CALLER_REVOKED})
    except Exception as exc:  # noqa: BLE001 - the periodic re-check closes the sockets anyway
        logger.warning("could not tell the bridges that %s was revoked: %s", owner, exc)


class PlayerTokenRefused(Exception):
    """A player token that does not prove its player; the message says why."""


PLAYER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # bridge.protocol.Identifier
PLAYER_TOKEN_MAX_TTL_S = 24 * 3600  # a longer-lived token is refused: a leaked one must die soon


def player_token_mint(*, key: GameClientKey, player_id: str, ttl_s: int = 3600) -> str:
    """A player token signed with `key` (which needs the `players` scope), valid `ttl_s` seconds."""
    if GameKeyScope.PLAYERS not in key.scopes:
        raise ValueError(f"{key}: only a key with the 'players' scope signs player tokens")
    if not key.player_token_key:
        raise ValueError(f"{key} was made before player tokens existed: create a new key to sign them")
    if not PLAYER_ID.fullmatch(player_id):
        raise ValueError("a player id is 1-64 characters from A-Z a-z 0-9 _ . : -")
    if not 0 < ttl_s <= PLAYER_TOKEN_MAX_TTL_S:
        raise ValueError(f"ttl_s must be between 1 and {PLAYER_TOKEN_MAX_TTL_S} seconds")
    expires = int(time.time()) + ttl_s
    return player_token_sign(
        token_key=key.player_token_key, prefix=key.prefix, player_id=player_id, expires=expires
    )


def player_token_verify(*, token: str, player_id: str) -> GameClientKey:
    """The active `players` key that signed `token` for `player_id`; PlayerTokenRefused otherwise."""
    fields = player_token_fields(token)
    if fields is None:
        raise PlayerTokenRefused("the player token is malformed: use the token your game server signed")
    prefix, claimed, expires, signature = fields
    if not hmac.compare_digest(claimed, player_id):
        raise PlayerTokenRefused("the player token is for another player_id")
    now = time.time()
    if expires <= now:
        raise PlayerTokenRefused("the player token has expired: ask your game server for a new one")
    if expires - now > PLAYER_TOKEN_MAX_TTL_S:
        raise PlayerTokenRefused(
            f"the player token lives longer than {PLAYER_TOKEN_MAX_TTL_S} s: sign shorter ones"
        )
    signers = GameClientKey.objects.filter(
        prefix=prefix, active=True, scopes__contains=[GameKeyScope.PLAYERS]
    ).exclude(player_token_key="")
    for key in signers:  # prefixes are 36 random bits: almost always one candidate
        expected = player_token_sign(
            token_key=key.player_token_key, prefix=prefix, player_id=claimed, expires=expires
        )
        if hmac.compare_digest(expected, token):
            return key
    raise PlayerTokenRefused("the player token's signature does not match an active game server key")
