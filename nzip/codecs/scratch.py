"""Memory for decoding: per-thread scratch buffers, and fresh output buffers.

Decoding and encoding split tensors into byte planes that live only for one call;
allocating them afresh every time costs page faults (and, across threads, contention in
the allocator), which at GB/s is a large share of the work. Each thread keeps one buffer
and grows it on demand; callers must not keep views past their call.
"""

from __future__ import annotations

import threading

import numpy as np

KEEP_BYTES = 256 << 20  # larger buffers are not kept between calls
PREFAULT_RATIO = 16  # see worth_prefaulting

_local = threading.local()


def fresh_buffers(sizes: list[int], align: int = 64) -> list[np.ndarray]:
    """New uint8 buffers of these sizes, `align`-aligned, one allocation each: freeing one
    tensor of a decoded model gives its memory back, and the C allocator hands out warm
    pages it already holds where it can. Their pages may not be faulted in: see prefault."""
    bufs = []
    for size in sizes:
        raw = np.empty(size + align, np.uint8)
        start = -raw.ctypes.data % align
        bufs.append(raw[start : start + size])
    return bufs


def worth_prefaulting(out_bytes: int, source_bytes: int) -> bool:
    """Fault in fresh output before decoding into it? The kernel zeroes each fresh (huge)
    page as it maps it, which, inside a decoder's loop, also evicts the decoder's tables
    from the core's caches. Measured on MiniLM-bf16 (45 MB), 2 threads: 11.4 ms of decoding
    + 2.3 ms of faulting up front, against 20.8 ms when the decoders fault the pages in
    themselves. But the sizes come from headers not yet proven: only when the output is at
    most PREFAULT_RATIO times the compressed bytes, so that a forged header cannot make
    this commit memory the decoders would never have touched."""
    return out_bytes <= PREFAULT_RATIO * source_bytes


def prefault(bufs: list[np.ndarray]) -> None:
    """Fault in the pages of fresh buffers (from fresh_buffers: writes into them)."""
    for buf in bufs:
        buf[::4096] = 0


def scratch(nbytes: int, slot: int = 0) -> np.ndarray:
    """A uint8 array of nbytes (uninitialised) owned by this thread; `slot` tells apart
    buffers needed at the same time."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < nbytes:
        buf = np.empty(max(nbytes, 1 << 16), np.uint8)
        if nbytes <= KEEP_BYTES:
            bufs[slot] = buf
    return buf[:nbytes]
