"""`zstd`: any dtype, the element bytes through zstd at a chosen level."""

from __future__ import annotations

import numpy as np

from .entropy import zstd
from .registry import Codec, register


@register
class Zstd(Codec):
    codec_id = "zstd"
    params = {"level": 3}

    def validate(self):
        self._check_int("level", -7, 22)

    def encode_payload(self, data, dtype, threads):
        return zstd.compress(data, self.level, threads)

    def decode_payload(self, payload, dtype, count, threads, out=None):
        raw = np.frombuffer(zstd.decompress(payload, count * dtype.itemsize), np.uint8)
        if out is None:
            return raw.copy()
        out[:] = raw
        return out
