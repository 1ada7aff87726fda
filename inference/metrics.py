"""Prometheus series of the inference path (served at /metrics with Django's)."""

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

# Django settings are read on a client's first use, not at import.
from console.redis_clients import redis_sync

TURNS = Counter("revenant_turns_total", "NPC turns served", ["tier"])
FALLBACKS = Counter(
    "revenant_turn_fallbacks_total",
    "Turns or turn parts that used a fallback",
    ["reason"],  # adapter_missing, adapter_not_loaded, worker_down, deadline, guardrail, structured_failed
)
TTFT = Histogram(
    "revenant_turn_ttft_seconds",
    "Time from the turn's start to its first delta",
    ["tier"],
    buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
)
TURN_SECONDS = Histogram(
    "revenant_turn_seconds",
    "Whole turn time",
    ["tier"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30),
)
NPC_TIERS = Gauge("revenant_npc_tier", "NPCs per activation tier, per region", ["region", "tier"])
TIER_CHANGES = Counter("revenant_tier_changes_total", "NPCs moved into a tier", ["tier"])
TIER_IGNORED = Counter(
    "revenant_tier_positions_ignored_total",
    "NPC positions a world.positions frame sent for ids that are not NPCs of its region (or twice)",
    ["region"],  # regions the database knows: a frame for any other is refused
)
TIER_SECONDS = Histogram(
    "revenant_tier_compute_seconds",
    "Time to recompute one region's tiers from a positions frame",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)
TOKENS = Counter("revenant_tokens_total", "Prompt and completion tokens of turns", ["region", "archetype"])


# Candidates for memory (facts, summaries) the checks left out (memory.extract.memory_candidate_check),
# per kind ("fact", "summary") and reason: counted in a Redis hash, field "kind|reason", because
# consolidation runs in Celery workers whose own registries /metrics (the web process) never
# reads; every scrape reads the hash (one HGETALL of a few fields).
MEMORY_REJECTED_KEY = "ops:memory:rejected"


class RedisCounters(Collector):
    """Counters that processes other than the one serving /metrics add to in a Redis hash."""

    def __init__(self, name: str, documentation: str, *, key: str, labels: list[str]) -> None:
        self.name, self.documentation, self.key, self.labels = name, documentation, key, labels

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labels)

    def describe(self) -> Iterator[Metric]:
        # Registering calls describe(), not collect(): no Redis round trip at import time.
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            with redis_sync() as client:
                counts = client.hgetall(self.key)
        except RedisError:
            counts = {}  # a scrape without these beats a failed scrape
        for field, value in sorted(counts.items()):
            values = (field.decode() if isinstance(field, bytes) else str(field)).split("|")
            if len(values) == len(self.labels):
                family.add_metric(values, float(value))
        yield family


MEMORY_REJECTED = RedisCounters(
    "revenant_memory_candidates_rejected",
    "Facts and summaries the checks kept out of memory (instruction, meta, markup, digits, not_about…)",
    key=MEMORY_REJECTED_KEY,
    labels=["kind", "reason"],
)
REGISTRY.register(MEMORY_REJECTED)
