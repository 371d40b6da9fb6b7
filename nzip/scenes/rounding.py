"""Shape-aware rounding: each Gaussian's rotation and scale levels chosen for its ellipsoid.

Rounding each stored number to its nearest level minimises the error of the numbers, not
of what is drawn. A render sees a Gaussian's covariance: turning a needle about its own
axis, or a disk about its normal, changes nothing, while the tilt of either changes a lot.
So among the 64 corners of the grid cell around each Gaussian (floor or ceiling of each of
the three small quaternion components and of each of the three log scales), `round_shapes`
takes the one whose ellipsoid lies nearest the original's: the least squared difference
between the two Gaussian kernels over space, relative to the original's own energy (a
closed form, so the choice costs no render). Encoder-only: the decoder reads levels as
before.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .frames import OTHERS, quaternions
from .render import _rotation_matrices

CORNERS = np.array([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], np.float64)  # (8, 3)
# every axis is judged as if FLOOR x the largest axis were added to it in quadrature: a
# render blurs each Gaussian (the 0.3 px low-pass) and seldom sees a thin axis end-on.
# Judged without it, the thin axes' relative errors ruled the choice: guitar at medium went
# 66.57 -> 62.77 dB; with it, 0.15: 66.77, 0.3: 66.87, 0.6: 66.88 (same bytes)
FLOOR = 0.6
CHUNK = 8192  # Gaussians per step: 64 candidate 3 x 3 matrices each, ~40 MB of float64


def _kernel_distance(inv_a: np.ndarray, log_a: np.ndarray, inv_b: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """||G_a - G_b||^2 / ||G_a||^2 for unnormalised Gaussian kernels exp(-x^T S^-1 x / 2):
    inv: the inverse covariances (..., 3, 3), log: the log scales summed (log sqrt det S).
    ||G_a||^2 = (2 pi)^1.5 sqrt(det S_a) / 2^1.5 and <G_a, G_b> = (2 pi)^1.5 / sqrt(det(S_a^-1 + S_b^-1))."""
    s = inv_a + inv_b
    det = (s[..., 0, 0] * (s[..., 1, 1] * s[..., 2, 2] - s[..., 1, 2] * s[..., 2, 1])
           - s[..., 0, 1] * (s[..., 1, 0] * s[..., 2, 2] - s[..., 1, 2] * s[..., 2, 0])
           + s[..., 0, 2] * (s[..., 1, 0] * s[..., 2, 1] - s[..., 1, 1] * s[..., 2, 0]))
    cross = 2.0 ** 1.5 * np.exp(-log_a) / np.sqrt(np.maximum(det, 1e-300))
    return 1.0 + np.exp(log_b - log_a) - 2.0 * cross


def _blurred(log_scales: np.ndarray, floor2: np.ndarray) -> np.ndarray:
    """log sqrt(exp(2 s) + floor^2): the axes of the ellipsoid plus a round one of the floor."""
    return 0.5 * np.log(np.exp(2.0 * log_scales) + floor2)


def _inverse_covariances(quats: np.ndarray, log_scales: np.ndarray) -> np.ndarray:
    """R diag(exp(-2 s)) R^T for quaternions (..., 4) and log scales (..., 3)."""
    shape = quats.shape[:-1]
    r = _rotation_matrices(torch.as_tensor(quats.reshape(-1, 4))).numpy().reshape(*shape, 3, 3)
    return np.einsum("...ak,...k,...bk->...ab", r, np.exp(-2.0 * log_scales), r)


def round_shapes(quats: np.ndarray, largest: np.ndarray, m: np.ndarray,
                 log_scales: np.ndarray, scale_base: np.ndarray, scale_step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(small quaternion levels, scale levels), both (n, 3) float64 of whole numbers.

    quats: unit quaternions (n, 4) with quats[i, largest[i]] >= 0, stored as the three
    components beside the largest (frames.quaternions); m: (n, 1) the rotation grid's half
    size (level l means (l - m) / (sqrt 2 m)); scale levels l mean scale_base + l * scale_step (step
    (n, 1)). The choices the decoder can make: levels within [0, 2m] and >= 0."""
    n = len(quats)
    small_out, scale_out = np.empty((n, 3)), np.empty((n, 3))
    for lo in range(0, n, CHUNK):
        sl = slice(lo, lo + CHUNK)
        q, big, mm = quats[sl], largest[sl], m[sl]
        c = len(q)
        # this chunk's Gaussians in units of their own size: the distance is scale-free,
        # and exp(-2 s) stays far from float64's limits
        centre = log_scales[sl].mean(axis=1, keepdims=True)
        s_true = log_scales[sl] - centre
        floor2 = (FLOOR * np.exp(s_true.max(axis=1, keepdims=True))) ** 2  # (c, 1)
        s_true = _blurred(s_true, floor2)
        ideal = np.take_along_axis(q, OTHERS[big], axis=1) * math.sqrt(2) * mm + mm
        rot_levels = np.clip(np.floor(ideal)[:, None, :] + CORNERS, 0, 2 * mm[:, None, :])  # (c, 8, 3)
        cand = quaternions(rot_levels.reshape(-1, 3), np.repeat(mm, 8, axis=0), np.repeat(big, 8))
        step = scale_step[sl]
        ideal_s = (log_scales[sl] - scale_base) / step
        scale_levels = np.maximum(np.floor(ideal_s)[:, None, :] + CORNERS, 0)  # (c, 8, 3)
        s_cand = _blurred(scale_base + scale_levels * step[:, None, :] - centre[:, None, :], floor2[:, None, :])
        r = _rotation_matrices(torch.as_tensor(cand)).numpy().reshape(c, 8, 3, 3)
        outer = np.einsum("ciak,cibk->cikab", r, r)  # (c, 8 rotations, 3 axes, 3, 3)
        inv_b = np.einsum("cikab,cjk->cijab", outer, np.exp(-2.0 * s_cand))  # (c, 8, 8, 3, 3)
        inv_a = _inverse_covariances(q, s_true)[:, None, None]
        dist = _kernel_distance(inv_a, s_true.sum(axis=1)[:, None, None], inv_b, s_cand.sum(axis=2)[:, None, :])
        best = dist.reshape(c, 64).argmin(axis=1)
        rows = np.arange(c)
        small_out[sl] = rot_levels[rows, best // 8]
        scale_out[sl] = scale_levels[rows, best % 8]
    return small_out, scale_out


__all__ = ["round_shapes"]
