"""The user partition function: a fixed SplitMix64 hash of the id, the same in every process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fulcrum.partition import mix64, partition_of

MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's output function written out on Python ints (the reference)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


IDS = [0, 1, 2, 7, -1, -(2**63), 2**63 - 1, 123_456_789_012]


def test_mix64_is_splitmix64_of_the_ids_bits():
    assert [int(v) for v in mix64(np.array(IDS))] == [_splitmix64(x & MASK) for x in IDS]
    assert int(mix64(np.array([0]))[0]) == 0xE220A8397B1DCDAF  # SplitMix64's first output from seed 0


def test_partitions_are_pinned():
    # Moving users between parts is a change of contract: these values must never change.
    assert partition_of(np.arange(12), 3).tolist() == [1, 2, 1, 0, 1, 2, 2, 0, 1, 1, 1, 0]
    assert partition_of(np.array(IDS), 7).tolist() == [_splitmix64(x & MASK) % 7 for x in IDS]


def test_every_user_lands_in_one_part_in_range_and_parts_are_balanced():
    ids = np.random.default_rng(0).integers(-(2**62), 2**62, size=200_000)
    for n in (1, 2, 3, 10):
        p = partition_of(ids, n)
        assert p.dtype == np.int64 and p.shape == ids.shape and p.min() >= 0 and p.max() < n
        assert np.bincount(p, minlength=n).min() > len(ids) / n * 0.97
    strided = np.bincount(partition_of(np.arange(0, 300_000, 3), 3))  # 100k ids sharing a stride still spread
    assert strided.min() > 32_000
    assert (partition_of(ids, 1) == 0).all()


def test_the_partition_does_not_depend_on_the_process_or_the_array():
    code = "import numpy as np; from fulcrum.partition import partition_of; print(partition_of(np.arange(50), 4).tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": "123"},
                           check=True)
    assert other.stdout.strip() == str(partition_of(np.arange(50), 4).tolist())
    ids = np.arange(100, dtype=np.int64)
    assert (partition_of(ids[::2], 5) == partition_of(ids, 5)[::2]).all()  # strided input, one id at a time
    assert (partition_of(ids.astype(np.int32), 5) == partition_of(ids, 5)).all()
    assert partition_of([5, 6], 5).tolist() == partition_of(np.array([5, 6]), 5).tolist()


def test_no_partitions_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        partition_of(np.arange(3), 0)
