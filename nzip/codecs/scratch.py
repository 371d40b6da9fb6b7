"""Per-thread scratch buffers for intermediate planes.

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
