"""Shape-aware rounding (nzip.scenes.rounding): grid points chosen for the ellipsoid they draw."""

import math

import numpy as np

from nzip.scenes.frames import OTHERS, canonical, quaternions
from nzip.scenes.rounding import FLOOR, _blurred, _inverse_covariances, _kernel_distance, round_shapes


def random_gaussians(n=3000, seed=0):
    """Frames in the codec's canonical form and log scales from round to needle- and disk-like."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    scales = rng.normal(-4, 1, (n, 3)) + rng.normal(0, 1.5, (n, 1)) * np.array([1.0, 0.0, -1.0])
    return canonical(q, scales)


def distance(q, s, q_ref, s_ref):
    """The distance round_shapes minimises: kernels of blurred axes, relative to the reference's energy."""
    centre = s_ref.mean(axis=1, keepdims=True)
    floor2 = (FLOOR * np.exp(s_ref.max(axis=1, keepdims=True) - centre)) ** 2
    a, b = _blurred(s_ref - centre, floor2), _blurred(s - centre, floor2)
    return _kernel_distance(_inverse_covariances(q_ref, a), a.sum(axis=1), _inverse_covariances(q, b), b.sum(axis=1))


def decode(small, levels, largest, m, base, step):
    return quaternions(small, m, largest), base + levels * step


def test_kernel_distance_is_zero_for_the_same_gaussian_and_grows_with_the_difference():
    q, s = random_gaussians(200)
    inv = _inverse_covariances(q, s - s.mean(axis=1, keepdims=True))
    log = (s - s.mean(axis=1, keepdims=True)).sum(axis=1)
    assert np.abs(_kernel_distance(inv, log, inv, log)).max() < 1e-5  # cancellation on needles: 6e-7 measured
    d = [_kernel_distance(inv, log, _inverse_covariances(q, s - s.mean(axis=1, keepdims=True) + e), log + 3 * e).mean()
         for e in (0.01, 0.05, 0.2)]
    assert 0 < d[0] < d[1] < d[2], d


def test_round_shapes_draws_closer_ellipsoids_than_rounding_each_number():
    q, s = random_gaussians()
    largest = np.abs(q).argmax(axis=1)
    others = OTHERS[largest]
    rng = np.random.default_rng(1)
    m = ((1 << rng.integers(4, 8, (len(q), 1))) - 1).astype(np.float64)  # grids of several tiers
    step = 2.0 ** -rng.integers(2, 6, (len(q), 1))
    base = np.floor(s.min(axis=0) / step.max()) * step.max()
    small, levels = round_shapes(q, largest, m, s, base, step)
    # what the decoder can take: whole levels on its grids
    assert np.array_equal(small, np.rint(small)) and np.array_equal(levels, np.rint(levels))
    assert small.min() >= 0 and (small <= 2 * m).all() and levels.min() >= 0
    nearest_small = np.rint(np.take_along_axis(q, others, axis=1) * math.sqrt(2) * m) + m
    nearest_levels = np.rint((s - base) / step)
    # each choice lies in the grid cell around the number (a corner), so it costs about the same bits
    assert np.abs(small - nearest_small).max() <= 1 and np.abs(levels - nearest_levels).max() <= 1
    chosen = distance(*decode(small, levels, largest, m, base, step), q, s)
    nearest = distance(*decode(nearest_small, nearest_levels, largest, m, base, step), q, s)
    # the nearest numbers are among the 64 corners: never better, and on average worse
    assert (chosen <= nearest + 1e-12).all()
    assert chosen.mean() < 0.92 * nearest.mean(), (chosen.mean(), nearest.mean())  # 0.86 measured
