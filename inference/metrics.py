"""Prometheus series of the inference path (served at /metrics with Django's)."""

from prometheus_client import Counter, Gauge, Histogram

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
