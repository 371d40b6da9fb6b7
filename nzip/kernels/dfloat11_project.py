"""GPU decoding of the DFloat11 project's layout (kernel: dfloat11_project.cu beside this)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorruptDataError
from .cuda import Module

_module = Module(Path(__file__).with_name("dfloat11_project.cu").read_text(), "dfloat11_project.cu")
THREADS = 256


def decode(luts: np.ndarray, codes: np.ndarray, sm: np.ndarray, positions: np.ndarray, gaps: np.ndarray,
           threads_per_block: int, bytes_per_thread: int, device):
    """Flat bf16 tensor on `device` from one module's buffers (numpy, checked sizes)."""
    import torch

    n, nwin = sm.size, positions.size - 1
    out = torch.empty(n, dtype=torch.bfloat16, device=device)
    if n == 0:
        return out
    if nwin * threads_per_block * bytes_per_thread < codes.size or np.any(np.diff(positions.astype(np.int64)) < 0):
        raise CorruptDataError("DFloat11 module: output positions do not cover the stream")
    up = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    d_luts, d_codes, d_sm, d_gaps = up(luts), up(codes), up(sm), up(gaps)
    n_threads = nwin * threads_per_block
    counts = torch.empty(n_threads, dtype=torch.int64, device=device)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    grid = -(-n_threads // THREADS)
    common = [d_luts, luts.size // 256, d_codes, codes.size, d_gaps, gaps.size, bytes_per_thread, n_threads]
    _module.kernel("dfloat11_project_count", device)(grid, THREADS, common + [counts, status])
    # a window's elements start at its output position; its threads follow one another
    per = counts.view(nwin, threads_per_block)
    pos = torch.from_numpy(positions.astype(np.int64)).to(device)
    starts = (per.cumsum(1) - per + pos[:-1, None]).reshape(-1)
    ends = torch.minimum(starts + counts, pos[1:].repeat_interleave(threads_per_block))
    _module.kernel("dfloat11_project_decode", device)(grid, THREADS, common + [starts, ends, d_sm, out])
    if int(status.item()):
        raise CorruptDataError("DFloat11 module: the exponent stream is corrupt")
    return out
