"""Fast scalar draws for the per-request hot loop."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def pick(r: random.Random, seq: Sequence[T]) -> T:
    """A uniform element of `seq`. random.choice/randrange cost ~2 us (rejection sampling on bits);
    this costs ~0.2 us. Deterministic for a seeded Random; the bias for sequences far below 2**53
    elements is negligible for simulation."""
    return seq[int(r.random() * len(seq))]
