"""`planes`: byte planes, each entropy coded per chunk with its own table.

Multi-byte elements are split into planes, most significant first; floats are rotated
left by one bit first so that the top plane is the exponent (bf16, fp32) and compresses
well while the mantissa planes stay near-random. Each (chunk, plane) is stored raw,
rANS-coded with its own table, or zstd-coded (when zstd_level > 0), whichever is smallest.

Payload: nchunks x u64 chunk sizes, then each chunk: for each plane
`u8 method, u64 length, bytes` (method 0 raw, 1 rANS = u8 lanes + table + stream, 2 zstd).
lanes=0 (default) picks the lane count from the chunk length (rans.auto_lanes).
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import CorruptDataError
from .entropy import _entropy, rans, zstd
from .payload import Reader
from .registry import Codec, register
from .scratch import scratch
from ..parallel import pmap

RAW, RANS, ZSTD = 0, 1, 2
PLANE_DTYPES = frozenset({
    "bfloat16", "float16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "complex64",
    "complex128", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
})


def word_size(dtype) -> int:
    """Bytes per plane group: a complex number is two floats."""
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


def split(data: np.ndarray, dtype, out: np.ndarray | None = None) -> np.ndarray:
    """Planes of `data`, plane-major: plane k is out[k*n:(k+1)*n], n = number of words."""
    word = word_size(dtype)
    if word == 1:
        return data
    out = np.empty_like(data) if out is None else out
    _entropy.planes_split(data, out, word, dtype.is_float)
    return out


def join(planes: np.ndarray, dtype, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """Inverse of split, into out or a new array (for one-byte types without out: planes);
    large arrays in ranges on `threads` threads."""
    word = word_size(dtype)
    if word == 1:
        if out is None:
            return planes
        out[:] = planes
        return out
    out = np.empty_like(planes) if out is None else out
    n = planes.size // word
    step = max(-(-n // max(threads, 1)), 1 << 18)
    pmap(lambda a: _entropy.planes_join(planes[a:], out[a * word : min(a + step, n) * word], word, dtype.is_float, n),
         range(0, n, step), threads)
    return out


def chunk_spans(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of n elements."""
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def encode_block(block: np.ndarray, precision: int, lanes: int, zstd_level: int) -> bytes:
    """Smallest of raw / rANS / zstd for one plane of one chunk, with its method byte."""
    best_method, best = RAW, block.tobytes()
    if block.size:
        counts = rans.histogram(block)
        freqs = rans.quantize(counts, precision)
        # estimate first: skip coding planes that would not shrink (random mantissas)
        if rans.cost_bits(counts, freqs, precision) / 8 + 40 + 4 * (lanes or 64) < 0.99 * block.size:
            lanes = lanes or rans.auto_lanes(block.size)
            coded = bytes([lanes]) + rans.pack_table(freqs) + rans.encode(block, freqs, precision, lanes)
            if len(coded) < len(best):
                best_method, best = RANS, coded
        if zstd_level > 0:
            coded = zstd.compress(block, zstd_level)
            if len(coded) < len(best):
                best_method, best = ZSTD, coded
    return struct.pack("<BQ", best_method, len(best)) + best


def decode_block(r: Reader, out: np.ndarray, precision: int) -> None:
    method = r.u8()
    body = r.take(r.u64())
    if method == RAW:
        if len(body) != out.size:
            raise CorruptDataError("planes: raw plane has the wrong length")
        out[:] = np.frombuffer(body, np.uint8)
    elif method == RANS:
        lanes = body[0] if len(body) else 0
        if not 1 <= lanes <= rans.MAX_LANES:
            raise CorruptDataError(f"planes: bad lane count {lanes}")
        freqs, pos = rans.unpack_table(body, 1, precision)
        rans.decode_into(body[pos:], freqs, precision, lanes, out)
    elif method == ZSTD:
        out[:] = np.frombuffer(zstd.decompress(body, out.size), np.uint8)
    else:
        raise CorruptDataError(f"planes: unknown plane method {method}")


@register
class Planes(Codec):
    codec_id = "planes"
    params = {"chunk": 1 << 18, "precision": 12, "lanes": 0, "zstd_level": 0}
    dtypes = PLANE_DTYPES

    def validate(self):
        self._check_int("chunk", 1 << 10, 1 << 30)
        self._check_int("precision", rans.MIN_PRECISION, rans.MAX_PRECISION)
        self._check_int("lanes", 0, rans.MAX_LANES)
        self._check_int("zstd_level", 0, 22)


    def encode_payload(self, data, dtype, threads):
        word = word_size(dtype)
        n = data.size // word
        view = data.reshape(n, word) if n else data

        def encode_chunk(span):
            a, b = span
            planes = split(np.ascontiguousarray(view[a:b]).reshape(-1), dtype)
            m = b - a
            return b"".join(encode_block(planes[k * m : (k + 1) * m], self.precision, self.lanes, self.zstd_level)
                            for k in range(word))

        chunks = pmap(encode_chunk, chunk_spans(n, self.chunk), threads)
        sizes = np.array([len(c) for c in chunks], "<u8").tobytes()
        return b"".join([sizes, *chunks])

    def decode_payload(self, payload, dtype, count, threads, out=None):
        word = word_size(dtype)
        n = count * dtype.itemsize // word
        spans = chunk_spans(n, self.chunk)
        r = Reader(payload, "planes")
        sizes = r.array("<u8", len(spans))
        if int(sizes.sum()) != len(payload) - r.pos:
            raise CorruptDataError("planes: chunk sizes do not add up to the payload")
        starts = r.pos + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        out = np.empty(count * dtype.itemsize, np.uint8) if out is None else out

        def decode_chunk(i):
            a, b = spans[i]
            m = b - a
            cr = Reader(payload[int(starts[i]) : int(starts[i]) + int(sizes[i])], "planes")
            # planes into this thread's scratch (no fresh pages per chunk), joined straight into out
            planes = scratch(m * word, slot=1)
            for k in range(word):
                decode_block(cr, planes[k * m : (k + 1) * m], self.precision)
            cr.done()
            join(planes, dtype, out=out[a * word : b * word])

        pmap(decode_chunk, range(len(spans)), threads)
        return out
