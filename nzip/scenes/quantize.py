"""The quantisers of the scene codec: k-means / residual vector quantisation, Morton order.

k-means runs on the CPU with torch (a GPU when the tensors are there): codebooks are fitted
on a sample of at most FIT_SAMPLE vectors (random, seeded), then every vector is assigned in
chunks (argmin of |c|^2 - 2 x.c, one matrix product per chunk). Residual VQ fits stage s on
what stages 0..s-1 left over, as in Compact 3D Gaussian Splatting (Lee et al. 2024).
"""

from __future__ import annotations

import numpy as np
import torch

FIT_SAMPLE = 1 << 16
ITERATIONS = 12


def assign(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 15) -> torch.Tensor:
    """Index of the nearest codeword of every row of x."""
    norms = (codebook * codebook).sum(dim=1)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = (norms[None, :] - 2 * x[i : i + chunk] @ codebook.T).argmin(dim=1)
    return out


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iterations: int = ITERATIONS,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """A k x d codebook (k at most the number of distinct-ish rows available) minimising
    the squared error, each row's weighted by `weights` (default: all alike)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.ones(len(x), dtype=x.dtype, device=x.device) if weights is None else weights.to(x)
    if len(x) > FIT_SAMPLE:
        pick = torch.randperm(len(x), generator=g)[:FIT_SAMPLE].to(x.device)
        fit, w = x[pick], w[pick]
    else:
        fit = x
    k = min(k, len(fit))
    codebook = fit[torch.randperm(len(fit), generator=g)[:k].to(x.device)].clone()
    for _ in range(iterations):
        idx = assign(fit, codebook)
        mass = torch.zeros(k, dtype=fit.dtype, device=fit.device).index_add_(0, idx, w)
        sums = torch.zeros_like(codebook).index_add_(0, idx, fit * w[:, None])
        empty = mass <= 0
        codebook = torch.where(empty[:, None], codebook, sums / torch.where(empty, 1, mass)[:, None])
        if empty.any():  # re-seed unused codewords on the worst-served vectors
            err = ((fit - codebook[idx]) ** 2).sum(dim=1) * w
            codebook[empty] = fit[torch.topk(err, int(empty.sum())).indices]
    return codebook


def residual_vq(x: torch.Tensor, stages: list[int], seed: int = 0,
                weights: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(codebooks, indices) of len(stages) residual stages of the given codebook sizes."""
    residual = x.clone()
    books, indices = [], []
    for s, k in enumerate(stages):
        book = kmeans(residual, k, seed + s, weights=weights)
        idx = assign(residual, book)
        residual -= book[idx]
        books.append(book)
        indices.append(idx)
    return books, indices


def rvq_decode(books: list[np.ndarray], indices: list[np.ndarray]) -> np.ndarray:
    # the first stage's rows are the output itself: no zeroed array to add them to (at 1M
    # SH3 Gaussians that array is 180 MB of fresh pages)
    out = np.take(books[0], indices[0].astype(np.intp), axis=0)
    for book, idx in zip(books[1:], indices[1:]):
        out += np.take(book, idx.astype(np.intp), axis=0)
    return out


# -- Morton order -----------------------------------------------------------------------------

def _spread(v: np.ndarray) -> np.ndarray:
    """Bits of v (< 2^21) spread to every third bit."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _compact(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64) & np.uint64(0x1249249249249249)
    for shift, mask in ((2, 0x10C30C30C30C30C3), (4, 0x100F00F00F00F00F), (8, 0x1F0000FF0000FF),
                        (16, 0x1F00000000FFFF), (32, 0x1FFFFF)):
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def morton(q: np.ndarray) -> np.ndarray:
    """Morton codes of N x 3 grid coordinates (each < 2^21)."""
    return _spread(q[:, 0]) | (_spread(q[:, 1]) << np.uint64(1)) | (_spread(q[:, 2]) << np.uint64(2))


def zigzag(d: np.ndarray) -> np.ndarray:
    """Signed integers (int64) as unsigned ones, small magnitudes small: 0, -1, 1, -2 -> 0, 1, 2, 3."""
    return (d << 1) ^ (d >> 63)


def unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int64)
    return (z >> 1) ^ -(z & 1)


def unmorton(code: np.ndarray) -> np.ndarray:
    return np.stack([_compact(code), _compact(code >> np.uint64(1)), _compact(code >> np.uint64(2))], axis=1)
