"""Memory for decoding: per-thread scratch buffers, and pre-faulted output buffers.

Decoding and encoding split tensors into byte planes that live only for one call;
allocating them afresh every time costs page faults (and, across threads, contention in
the allocator), which at GB/s is a large share of the work. Each thread keeps one buffer
and grows it on demand; callers must not keep views past their call.
"""

from __future__ import annotations

import threading

import numpy as np

KEEP_BYTES = 256 << 20  # larger buffers are not kept between calls

_local = threading.local()


def fresh_buffer(nbytes: int) -> np.ndarray:
    """A new uint8 array whose pages are already faulted in, by this thread: page faults
    taken by several decoding threads at once contend in the kernel and cost more than
    the decoding itself."""
    buf = np.empty(nbytes, np.uint8)
    buf[::4096] = 0
    return buf


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
