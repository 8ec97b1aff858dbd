"""Small bounded-memory summaries the per-account states are made of.

Hand-written because each is a few lines and the libraries that have them (datasketch's HyperLogLog,
for instance) cost more per update than the whole of a state update here: these run once per
request, in pure Python, and must stay in the low microseconds.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

_MASK63 = (1 << 63) - 1


class Welford:
    """Running mean and variance (Welford's algorithm): numerically stable, O(1) memory."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


class TopK:
    """Space-Saving heavy hitters (Metwally et al. 2005): the k most frequent items with counts that
    overestimate by at most the evicted minimum. Each item carries one example payload (its text)."""

    __slots__ = ("k", "counts", "examples")

    def __init__(self, k: int = 12) -> None:
        self.k = k
        self.counts: dict[int, int] = {}
        self.examples: dict[int, Any] = {}

    def add(self, item: int, example: Any = None) -> None:
        c = self.counts.get(item)
        if c is not None:
            self.counts[item] = c + 1
            return
        if len(self.counts) < self.k:
            self.counts[item] = 1
            self.examples[item] = example
            return
        victim = min(self.counts, key=self.counts.__getitem__)
        floor = self.counts.pop(victim)
        self.examples.pop(victim, None)
        self.counts[item] = floor + 1
        self.examples[item] = example

    def top(self, n: int | None = None) -> list[tuple[int, int]]:
        items = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return items if n is None else items[:n]


class DistinctCounter:
    """K-minimum-values distinct count (Bar-Yossef et al. 2002) over already-hashed 63-bit items:
    exact below k distinct items, then relative error about 1/sqrt(k)."""

    __slots__ = ("k", "heap", "members")

    def __init__(self, k: int = 256) -> None:
        self.k = k
        self.heap: list[int] = []  # max-heap of the k smallest hashes, stored negated
        self.members: set[int] = set()

    def add(self, h: int) -> None:
        h &= _MASK63
        if h in self.members:
            return
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, -h)
            self.members.add(h)
        elif h < -self.heap[0]:
            gone = -heapq.heappushpop(self.heap, -h)
            self.members.discard(gone)
            self.members.add(h)

    def estimate(self) -> float:
        if len(self.heap) < self.k:
            return float(len(self.heap))
        kth = -self.heap[0]
        return (self.k - 1) * _MASK63 / max(kth, 1)
