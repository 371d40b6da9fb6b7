"""The adaptive context coder (nzip.codecs.entropy.adaptive)."""

import numpy as np
import pytest

from nzip.codecs.entropy import adaptive
from nzip.errors import CorruptDataError


def conditional_entropy_bytes(values, contexts):
    total = 0.0
    for c in np.unique(contexts):
        _, counts = np.unique(values[contexts == c], return_counts=True)
        total -= (counts * np.log2(counts / counts.sum())).sum()
    return total / 8


def test_round_trip_comes_within_a_percent_of_the_conditional_entropy():
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, 40, 300_000)
    values = rng.geometric(0.25, contexts.size) * (contexts % 4 + 1) - 7  # the context changes the law
    blob = adaptive.encode(values, contexts)
    assert np.array_equal(adaptive.decode(blob, contexts), values)
    bound = conditional_entropy_bytes(values, contexts)
    assert bound < len(blob) < 1.01 * bound
    # the same values without their contexts cost more: the contexts are what it learns from
    assert len(adaptive.encode(values)) > 1.1 * len(blob)


@pytest.mark.parametrize("values", [np.zeros(0, np.int64), np.full(1000, 5), np.array([-(1 << 62), 0, 1 << 62, 3]),
                                    np.arange(4096)])
def test_edge_alphabets_round_trip(values):
    assert np.array_equal(adaptive.decode(adaptive.encode(values)), values)


def test_limits_are_clear_errors():
    with pytest.raises(ValueError, match="at most 4096"):
        adaptive.encode(np.arange(5000))
    with pytest.raises(ValueError, match="contexts for"):
        adaptive.encode(np.arange(10), np.arange(9))


def test_damaged_streams_are_refused_not_misread():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 50, 20_000)
    blob = adaptive.encode(values)
    with pytest.raises(CorruptDataError, match="truncated"):
        adaptive.decode(blob[: len(blob) // 2])
    with pytest.raises(CorruptDataError):
        adaptive.decode(blob[:4])
    with pytest.raises(CorruptDataError, match="expects"):
        adaptive.decode(blob, np.zeros(10))
    # a flipped bit in the coded bytes decodes to other values of the same alphabet, never
    # outside it (the container's checksums are what catch it)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x10
    out = adaptive.decode(bytes(bad))
    assert out.shape == values.shape and out.min() >= 0 and out.max() < 50 and not np.array_equal(out, values)
