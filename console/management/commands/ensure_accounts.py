import os
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.permissions import DESIGNERS, OPS
from console.services.users import account_ensure


class Command(BaseCommand):
    help = (
        "Create the `admin` superuser (password from ADMIN_PASSWORD, else generated and printed once) "
        "and, with --demo-staff, a `designer` and an `ops` account for trying the permission groups."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--demo-staff", action="store_true")

    def handle(self, *args: Any, demo_staff: bool, **options: Any) -> None:
        accounts: list[tuple[str, str | None, bool, str | None]] = [
            ("admin", os.environ.get("ADMIN_PASSWORD") or None, True, None)
        ]
        if demo_staff:
            accounts += [("designer", None, False, DESIGNERS), ("ops", None, False, OPS)]
        for username, password, superuser, group in accounts:
            try:
                _, given = account_ensure(
                    username=username, password=password, superuser=superuser, group=group
                )
            except ValidationError as exc:
                raise CommandError(f"password for {username!r} rejected: {' '.join(exc.messages)}") from exc
            if given is None:
                self.stdout.write(f"Account {username!r} exists; password unchanged.")
            elif password:
                self.stdout.write(f"Account {username!r}: password set from the environment.")
            else:
                self.stdout.write(f"Account {username!r} created with password: {given}")
