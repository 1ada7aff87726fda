"""`manage.py compose_adapters --adapter 12:1.0 --adapter 31:0.8 [--svd-rank 16] [--activate]`:
stack an archetype adapter with subfaction and NPC deltas into one registered adapter."""

from __future__ import annotations

import argparse
import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.models import Adapter
from inference.tasks import residency_sync_enqueue
from training.composition import CompositionError, adapter_compose


def _component(value: str) -> tuple[int, float]:
    """PK:WEIGHT, both parsed here so a typo fails before anything loads."""
    pk, _, weight = value.partition(":")
    try:
        parsed = int(pk), float(weight) if weight else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: write PK:WEIGHT, for example 12:1.0") from None
    if not math.isfinite(parsed[1]):
        raise argparse.ArgumentTypeError(f"{value!r}: the weight must be a finite number")
    return parsed


class Command(BaseCommand):
    help = "Compose adapters (archetype + subfaction/NPC deltas) into one adapter, registered as a candidate."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--adapter", dest="components", action="append", type=_component, required=True,
            metavar="PK:WEIGHT", help="An adapter and its weight (1.0 when left out); give two or more.",
        )  # fmt: skip
        parser.add_argument(
            "--svd-rank", type=int, default=None,
            help="Approximate the sum at this rank (SVD) instead of the exact sum of the components' ranks.",
        )  # fmt: skip
        parser.add_argument(
            "--activate",
            action="store_true",
            help="Make it the active adapter of its target (retires the old).",
        )

    def handle(
        self, *args: Any, components: list[tuple[int, float]], svd_rank: int | None, activate: bool,
        **options: Any,
    ) -> None:  # fmt: skip
        adapters = Adapter.objects.select_related(
            "archetype", "subfaction__archetype", "npc__archetype", "base_model"
        ).in_bulk([pk for pk, _ in components])
        missing = [str(pk) for pk, _ in components if pk not in adapters]
        if missing:
            raise CommandError(f"no adapter {', '.join(missing)}: see the Adapters page for their ids")
        try:
            adapter = adapter_compose(
                components=[(adapters[pk], weight) for pk, weight in components],
                svd_rank=svd_rank,
                activate=activate,
            )
        except CompositionError as exc:
            raise CommandError(str(exc)) from exc
        if activate:
            residency_sync_enqueue()
        self.stdout.write(
            self.style.SUCCESS(
                f"Registered {adapter} (rank {adapter.rank}, {adapter.composition['combination']}, "
                f"sha256 {adapter.sha256[:12]}…)"
            )
        )
