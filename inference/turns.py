"""Moved: the turn is the pipeline in inference/turn/ (play: inference.turn.play), and the tiers'
sampling table is inference.sampling.

Kept only for training/evaluation.py, which another helper of issue 18 owns while this lands:
its `from inference.turns import tier_sampling` becomes `from inference.sampling import
tier_sampling`, and this file goes.
"""

from inference.sampling import tier_sampling

__all__ = ["tier_sampling"]
