"""Stable user partitions: which of ``n`` score parts a user belongs to.

Parts are scored by different processes, possibly on different machines, and checked
again when they are combined, so a user's partition must be a fixed function of the id
alone: SplitMix64's finalizer (a bijective 64-bit mixer) of the id's two's-complement
bits, modulo ``n``. Not Python's ``hash()``: on ints it is the identity (ids that share a
stride would pile into one part) and it is not a contract across Python versions.
"""

from __future__ import annotations

import numpy as np

# SplitMix64 (Steele, Lea & Flood 2014): the golden-ratio increment, then the two multipliers
# of its output function. Changing any of them moves users between parts.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(user_ids: np.ndarray) -> np.ndarray:
    """(n,) uint64: SplitMix64's output function of each int64 id (wrapping arithmetic)."""
    z = np.ascontiguousarray(user_ids, dtype=np.int64).view(np.uint64) + _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def partition_of(user_ids: np.ndarray, n: int) -> np.ndarray:
    """(n_users,) int64 in ``[0, n)``: each user's partition among ``n``."""
    if n < 1:
        raise ValueError(f"the number of partitions must be at least 1, got {n}")
    return (mix64(user_ids) % np.uint64(n)).astype(np.int64)
