"""The context-mixing coder (nzip.codecs.entropy.mixing)."""

import numpy as np
import pytest

from nzip.codecs.entropy import adaptive, mixing
from nzip.codecs.entropy.mixing import Model
from nzip.errors import CorruptDataError

from test_entropy_adaptive import conditional_entropy_bytes


def test_one_context_comes_within_two_percent_of_the_conditional_entropy():
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, 40, 300_000)
    values = rng.geometric(0.25, contexts.size) * (contexts % 4 + 1) - 7
    blob = mixing.encode(values, [Model(contexts)])
    assert np.array_equal(mixing.decode(blob, [Model(contexts)]), values)
    bound = conditional_entropy_bytes(values, contexts)
    assert bound < len(blob) < 1.02 * bound


def test_two_half_contexts_mix_to_what_neither_has_alone():
    """Each value lies near 4a or near 4b, for two independent contexts a and b; a model for
    each, mixed, puts the odds on both (one frequency table per joint context would need
    64 x 64 of them)."""
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 64, 200_000), rng.integers(0, 64, 200_000)
    values = np.where(rng.random(a.size) < 0.5, 4 * a, 4 * b) + rng.integers(0, 4, a.size)
    both = [Model(a), Model(b)]
    blob = mixing.encode(values, both)
    assert np.array_equal(mixing.decode(blob, both), values)
    assert len(blob) < 0.8 * min(len(mixing.encode(values, [Model(a)])), len(mixing.encode(values, [Model(b)])))


def test_earlier_symbols_of_the_stream_are_contexts():
    """A random walk: each value is known to within +-2 of the one before, which only the
    sequential loop can know (ref = i - 1); the cost is close to log2(5) bits a value."""
    rng = np.random.default_rng(2)
    walk = np.cumsum(rng.integers(-2, 3, 100_000)) % 256
    before = [Model(None, np.arange(walk.size) - 1, 0)]
    blob = mixing.encode(walk, before)
    assert np.array_equal(mixing.decode(blob, before), walk)
    assert len(blob) < 1.1 * walk.size * np.log2(5) / 8
    assert len(adaptive.encode(walk)) > 2 * len(blob)


@pytest.mark.parametrize("values", [np.zeros(0, np.int64), np.full(1000, 5), np.array([-(1 << 62), 0, 1 << 62, 3]),
                                    np.arange(4096)])
def test_edge_alphabets_round_trip(values):
    models = [Model(), Model(None, np.arange(values.size) - 1, 3)]
    assert np.array_equal(mixing.decode(mixing.encode(values, models), models), values)


def test_limits_are_clear_errors():
    with pytest.raises(ValueError, match="at most 4096"):
        mixing.encode(np.arange(5000), [Model()])
    with pytest.raises(ValueError, match="contexts for"):
        mixing.encode(np.arange(10), [Model(np.arange(9))])
    with pytest.raises(ValueError, match="1 to 16 models"):
        mixing.encode(np.arange(10), [])
    with pytest.raises(ValueError, match="bad sizes, contexts or symbols"):  # a ref must point back
        mixing.encode(np.arange(10), [Model(None, np.arange(10), 0)])


def test_damaged_streams_are_refused_not_misread():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 50, 20_000)
    models = [Model(values % 1), Model(None, np.arange(values.size) - 1, 2)]
    blob = mixing.encode(values, models)
    with pytest.raises(CorruptDataError, match="truncated"):
        mixing.decode(blob[: len(blob) // 2], models)
    with pytest.raises(CorruptDataError):
        mixing.decode(blob[:4], models)
    with pytest.raises(CorruptDataError, match="expects"):
        mixing.decode(blob, [Model(np.zeros(10))])
    # a flipped bit decodes to other values of the same alphabet (or is refused when it
    # leaves it), never to values outside it: the container's checksums are what catch it
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x10
    try:
        out = mixing.decode(bytes(bad), models)
    except CorruptDataError:
        return
    assert out.shape == values.shape and out.min() >= 0 and out.max() < 50 and not np.array_equal(out, values)
