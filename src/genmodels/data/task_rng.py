"""The task set's random numbers: SHA-256 in counter mode, so a seed gives the same task set on every
Python, platform and library version (``random.Random``'s methods have changed between Python
releases; a frozen task set cannot depend on them).

Draw ``n`` of ``Rng(*key)``: the first 8 bytes of ``SHA-256("<key>#<n>")`` as a big-endian integer,
reduced modulo the range (the bias, below 2**-40 for the ranges used here, is part of the frozen
definition, not an error to fix: changing it changes every task set).
"""
from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

T = TypeVar("T")

__all__ = ["Rng"]


class Rng:
    """Deterministic draws keyed by ``key`` (joined with ``/``): ``Rng(version, seed, task, attempt)``."""

    def __init__(self, *key: object):
        self._key = "/".join(str(k) for k in key)
        self._n = 0

    def below(self, n: int) -> int:
        """An integer in ``[0, n)``."""
        if n <= 0:
            raise ValueError(f"Rng.below({n}): the range must hold at least one value")
        digest = hashlib.sha256(f"{self._key}#{self._n}".encode()).digest()
        self._n += 1
        return int.from_bytes(digest[:8], "big") % n

    def randint(self, low: int, high: int) -> int:
        """An integer in ``[low, high]`` (both ends included)."""
        return low + self.below(high - low + 1)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.below(len(seq))]

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        """``k`` distinct elements of ``seq`` in drawn order (a partial Fisher–Yates shuffle)."""
        pool = list(seq)
        if not 0 <= k <= len(pool):
            raise ValueError(f"Rng.sample: cannot draw {k} of {len(pool)}")
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]
