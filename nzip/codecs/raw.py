"""`raw`: the bytes as they are (for tiny tensors and incompressible data)."""

from __future__ import annotations

import numpy as np

from ..errors import CorruptDataError
from .registry import Codec, register


@register
class Raw(Codec):
    codec_id = "raw"
    max_expansion = 1

    def encode_payload(self, data, dtype, threads):
        return data.tobytes()

    def decode_payload(self, payload, dtype, count, threads, out=None):
        if len(payload) != count * dtype.itemsize:
            raise CorruptDataError(f"raw: payload has {len(payload)} bytes, expected {count * dtype.itemsize}")
        if out is None:
            return np.frombuffer(payload, np.uint8).copy()
        out[:] = np.frombuffer(payload, np.uint8)
        return out
