"""What a turn of each activation tier may generate: length, sampling, deadline and the worker's
scheduling priority. The turn pipeline plans with it (inference.turn.plan); the eval harness
samples as a Gold turn does, and the capacity planner sizes workers from its lengths."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class TierSampling:
    max_tokens: int
    temperature: float
    top_p: float
    deadline_s: float
    uses_model: bool = True
    # vLLM's multiplicative penalty on tokens already in the prompt or reply: small models (the
    # bundled 135M one) otherwise loop on a phrase until max_tokens.
    repetition_penalty: float = 1.0
    # The worker schedules lower numbers first (vLLM's priority policy): a Gold turn is never
    # queued behind Silver turns or background work (inference.engine.BACKGROUND_PRIORITY).
    priority: int = 0


def tier_sampling(tier: str) -> TierSampling:
    """Gold: full replies; Silver: short ones; Bronze: barks without the model."""
    deadlines = settings.TURN_DEADLINES_S
    table = {
        "gold": TierSampling(
            max_tokens=96,
            temperature=0.8,
            top_p=0.95,
            deadline_s=deadlines["gold"],
            repetition_penalty=1.1,
            priority=0,
        ),
        "silver": TierSampling(
            max_tokens=48,
            temperature=0.7,
            top_p=0.9,
            deadline_s=deadlines["silver"],
            repetition_penalty=1.1,
            priority=1,
        ),
        "bronze": TierSampling(max_tokens=0, temperature=0.0, top_p=1.0, deadline_s=0.0, uses_model=False),
    }
    if tier not in table:
        raise ValueError(f"unknown tier {tier!r}: use gold, silver or bronze")
    return table[tier]
