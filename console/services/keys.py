"""Game client keys: create (the secret is returned once), authenticate, revoke."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser, User
from django.utils import timezone

from console.models import GameClientKey

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
    key.active = False
    key.save(update_fields=["active"])
