"""Naive sequential fine-tuning: the lower bound every CL method must beat."""

from __future__ import annotations

from clbench.protocol import Method
from clbench.registry import register_method


@register_method("naive")
class Naive(Method):
    """Naive sequential fine-tuning (no protection against forgetting).

    Mechanism: train on each experience in turn with the trainer's optimizer; every hook is the
    base class no-op. Equivalent to Avalanche's ``Naive`` strategy.

    Hooks used: none.

    Deviations from the paper/official code: none (there is no paper; Avalanche parity is tested).
    """

    shardable = True
