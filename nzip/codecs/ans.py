"""`ans`: rANS with one table per byte plane of the whole tensor.

The tensor is split into planes as in `planes` (floats rotated so that the top plane is
the exponent). Each plane gets one rANS table for the whole tensor, or is stored raw when
coding would not shrink it (the low mantissa planes of fp32). Coded planes are cut into
independent chunks so that threads encode and decode in parallel, each chunk with `lanes`
interleaved states. For 16-bit types the top plane's decoder writes the final elements
directly (decode and plane join fused into one pass).

Payload, for each plane (most significant first): u8 method (0 raw, 1 rANS), u64 section
length, section. A rANS section: u8 lanes, table, nchunks x u64 stream sizes, the streams.
lanes=0 (default) picks the lane count per plane from its length (rans.auto_lanes).
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import CorruptDataError
from ..parallel import pmap
from .entropy import _entropy, rans
from .payload import Reader
from .planes import PLANE_DTYPES, join, split, word_size
from .registry import Codec, register

RAW, RANS = 0, 1


@register
class Ans(Codec):
    codec_id = "ans"
    params = {"precision": 12, "lanes": 0, "chunk": 1 << 20}
    dtypes = PLANE_DTYPES

    def validate(self):
        self._check_int("precision", rans.MIN_PRECISION, rans.MAX_PRECISION)
        self._check_int("lanes", 0, rans.MAX_LANES)
        self._check_int("chunk", 1 << 10, 1 << 30)

    def _spans(self, n: int) -> list[tuple[int, int]]:
        return [(a, min(a + self.chunk, n)) for a in range(0, n, self.chunk)]

    def _encode_plane(self, plane: np.ndarray, threads: int) -> bytes:
        counts = rans.histogram(plane)
        freqs = rans.quantize(counts, self.precision)
        lanes = self.lanes or rans.auto_lanes(min(plane.size, self.chunk))
        # estimate first, so that near-random planes are not coded for nothing
        overhead = 33 + 2 * int((freqs > 0).sum()) + (4 * lanes + 10) * len(self._spans(plane.size))
        if rans.cost_bits(counts, freqs, self.precision) / 8 + overhead < plane.size:
            streams = pmap(lambda s: rans.encode(plane[s[0] : s[1]], freqs, self.precision, lanes),
                           self._spans(plane.size), threads)
            sizes = np.array([len(s) for s in streams], "<u8").tobytes()
            section = b"".join([bytes([lanes]), rans.pack_table(freqs), sizes, *streams])
            if len(section) < plane.size:
                return struct.pack("<BQ", RANS, len(section)) + section
        return struct.pack("<BQ", RAW, plane.size) + plane.tobytes()

    def encode_payload(self, data, dtype, threads):
        word = word_size(dtype)
        n = data.size // word
        planes = split(data, dtype)
        return b"".join(self._encode_plane(planes[k * n : (k + 1) * n], threads) for k in range(word))

    def decode_payload(self, payload, dtype, count, threads):
        word = word_size(dtype)
        n = count * dtype.itemsize // word
        spans = self._spans(n)
        r = Reader(payload, "ans")
        sections = []
        for _ in range(word):
            method = r.u8()
            sections.append((method, r.take(r.u64())))
        r.done()
        planes = np.empty(n * word, np.uint8)
        # a 16-bit element's top plane decodes straight into the output (fused join)
        fused = word == 2 and sections[0][0] == RANS
        out = np.empty(n * word, np.uint8) if fused else None
        for k in range(word - 1, -1, -1):
            method, body = sections[k]
            plane = planes[k * n : (k + 1) * n]
            if method == RAW:
                if len(body) != n:
                    raise CorruptDataError("ans: raw plane has the wrong length")
                plane[:] = np.frombuffer(body, np.uint8)
                continue
            if method != RANS:
                raise CorruptDataError(f"ans: unknown plane method {method}")
            sr = Reader(body, "ans")
            lanes = sr.u8()
            if not 1 <= lanes <= rans.MAX_LANES:
                raise CorruptDataError(f"ans: bad lane count {lanes}")
            freqs, sr.pos = rans.unpack_table(body, sr.pos, self.precision)
            sizes = sr.array("<u8", len(spans))
            streams = [sr.take(int(s)) for s in sizes]
            sr.done()
            if fused and k == 0:
                low = planes[n:]

                def decode_span(i):
                    a, b = spans[i]
                    used = _entropy.rans_decode_join16(streams[i], freqs, self.precision, lanes,
                                                       low[a:b], out[2 * a : 2 * b], dtype.is_float)
                    if used != len(streams[i]):
                        raise CorruptDataError("ans: rANS stream is corrupt")
            else:
                def decode_span(i):
                    a, b = spans[i]
                    rans.decode_into(streams[i], freqs, self.precision, lanes, plane[a:b])

            pmap(decode_span, range(len(spans)), threads)
        return out if fused else join(planes, dtype)
