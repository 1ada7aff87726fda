from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from console.models import GameClientKey, GameKeyScope
from console.services.keys import game_key_authenticate, game_key_create, game_key_revoke

pytestmark = pytest.mark.django_db


def test_create_game_key_prints_the_secret_alone_on_the_last_line():
    out = StringIO()

    call_command("create_game_key", "unity-build-42", stdout=out)

    secret = out.getvalue().strip().splitlines()[-1]
    key = GameClientKey.objects.get(name="unity-build-42")
    assert secret.startswith("rvk_")
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {key.prefix, key.secret_hash}
    assert game_key_authenticate(secret=secret) == key


def test_create_game_key_with_scopes():
    out = StringIO()

    call_command("create_game_key", "spectator", "--scope", "observe", stdout=out)

    assert GameClientKey.objects.get(name="spectator").scopes == [GameKeyScope.OBSERVE]


def test_duplicate_key_name_is_a_clear_error():
    game_key_create(name="bot")

    with pytest.raises(CommandError, match="name"):
        call_command("create_game_key", "bot", stdout=StringIO())


def test_wrong_or_revoked_secret_does_not_authenticate():
    key, secret = game_key_create(name="bot")

    assert game_key_authenticate(secret=secret + "x") is None
    assert game_key_authenticate(secret="not-a-key") is None
    game_key_revoke(key=key)
    assert game_key_authenticate(secret=secret) is None


def test_authenticate_records_last_use():
    key, secret = game_key_create(name="bot")

    game_key_authenticate(secret=secret)

    key.refresh_from_db()
    assert key.last_used_at is not None
