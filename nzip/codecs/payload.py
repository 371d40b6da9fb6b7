"""Bounds-checked reading of codec payloads: every read past the end is a clear error."""

from __future__ import annotations

import struct

import numpy as np

from ..errors import CorruptDataError


def check_status(rc: int, what: str) -> None:
    """Turn a compiled decoder's status (0 ok, -1 corrupt, -2 out of memory) into errors."""
    if rc == -2:
        raise MemoryError(f"{what}: out of memory")
    if rc != 0:
        raise CorruptDataError(f"{what}: payload is corrupt")


class Reader:
    def __init__(self, buf: memoryview, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CorruptDataError(f"{self.what}: payload truncated (needs {n} bytes at {self.pos}, has {len(self.buf)})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * size), dtype, count)

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise CorruptDataError(f"{self.what}: {len(self.buf) - self.pos} unexpected bytes after the payload")
