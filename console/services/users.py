"""Console accounts: the superuser and staff accounts in the designers and ops groups."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from console.permissions import GROUP_PERMISSIONS


def _generated_password() -> str:
    return secrets.token_urlsafe(12)


@transaction.atomic
def account_ensure(
    *, username: str, password: str | None = None, superuser: bool = False, group: str | None = None
) -> tuple[AbstractUser, str | None]:
    """Create the account if missing and return (user, password it was given), else (user, None).

    An existing account keeps its password unless `password` is passed, so re-running
    `make run` never locks anyone out. A generated password is returned for printing once.
    """
    if group is not None and group not in GROUP_PERMISSIONS:
        raise ValueError(f"unknown group {group!r}: use one of {', '.join(GROUP_PERMISSIONS)}")
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    given: str | None = None
    if user is None:
        given = password or _generated_password()
        user = user_model(username=username)
    elif password:
        given = password
    if given is not None:
        validate_password(given, user)
        user.set_password(given)
    user.is_staff = True
    user.is_superuser = superuser
    user.is_active = True
    user.save()
    if group is not None:
        user.groups.add(Group.objects.get(name=group))
    return user, given
