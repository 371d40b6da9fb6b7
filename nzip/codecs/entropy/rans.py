"""Order-0 interleaved rANS over bytes.

A stream codes n byte symbols with one frequency table (quantized to 2**precision), or
with one table per context (the value of another plane at the same position); `lanes`
states are interleaved for instruction-level parallelism. Tables serialize to a 32-byte
presence bitmap, a width byte, and freq - 1 of each present symbol in that width.
"""

from __future__ import annotations

import numpy as np

from ...errors import CorruptDataError
from . import _entropy

MIN_PRECISION, MAX_PRECISION = 8, 12
MAX_LANES = 128


def auto_lanes(n: int) -> int:
    """Interleaved states for a stream of n symbols: many lanes feed the AVX-512 loops (16
    states per vector), but each costs 4 bytes of final state, which small streams feel."""
    if n >= 1 << 16:
        return 64
    if n >= 1 << 14:
        return 32
    if n >= 1 << 12:
        return 16
    return 8


def histogram(symbols: np.ndarray) -> np.ndarray:
    counts = np.zeros(256, np.uint64)
    _entropy.histogram(symbols, counts)
    return counts


def quantize(counts: np.ndarray, precision: int) -> np.ndarray:
    """Frequencies summing to 2**precision, >= 1 for every symbol that occurs."""
    counts = counts.astype(np.float64)
    total = counts.sum()
    M = 1 << precision
    if total == 0:
        freqs = np.zeros(256, np.int64)
        freqs[0] = M
        return freqs.astype(np.uint32)
    freqs = np.where(counts > 0, np.maximum(1, np.rint(counts * (M / total))), 0).astype(np.int64)
    diff = M - int(freqs.sum())
    while diff != 0:
        # settle the rounding error on the most frequent symbols, where it costs least
        i = int(np.argmax(freqs))
        step = diff if diff > 0 else -min(-diff, freqs[i] - 1)
        if step == 0:  # cannot happen for precision >= 8 (256 symbols fit), kept as a guard
            raise AssertionError("rANS table cannot be normalised")
        freqs[i] += step
        diff -= step
    return freqs.astype(np.uint32)


def cost_bits(counts: np.ndarray, freqs: np.ndarray, precision: int) -> float:
    """Bits that `counts` cost under `freqs` (the ideal code length)."""
    m = counts > 0
    return float(np.sum(counts[m] * (precision - np.log2(freqs[m].astype(np.float64)))))


def pack_table(freqs: np.ndarray) -> bytes:
    """32-byte presence bitmap, u8 width (1 or 2), then freq - 1 of each present symbol."""
    present = freqs > 0
    values = freqs[present].astype(np.int64) - 1
    width = 1 if values.size == 0 or values.max() < 256 else 2
    return np.packbits(present).tobytes() + bytes([width]) + values.astype(f"<u{width}").tobytes()


def unpack_table(buf: memoryview, pos: int, precision: int) -> tuple[np.ndarray, int]:
    if pos + 33 > len(buf):
        raise CorruptDataError("rANS table truncated")
    present = np.unpackbits(np.frombuffer(buf, np.uint8, 32, pos)).astype(bool)
    width = buf[pos + 32]
    k = int(present.sum())
    pos += 33
    if width not in (1, 2) or pos + width * k > len(buf):
        raise CorruptDataError("rANS table truncated or malformed")
    freqs = np.zeros(256, np.uint32)
    freqs[present] = np.frombuffer(buf, f"<u{width}", k, pos).astype(np.uint32) + 1
    if int(freqs.sum()) != 1 << precision:
        raise CorruptDataError("rANS table does not sum to its precision")
    return freqs, pos + width * k


def table_bytes(counts: np.ndarray):
    """Size pack_table will need for tables built from counts (one per row; an estimate:
    the width assumes frequencies in proportion to the counts)."""
    counts = np.asarray(counts, np.float64)
    k = (counts > 0).sum(axis=-1)
    narrow = counts.max(axis=-1, initial=0) * (1 << MAX_PRECISION) < 256 * np.maximum(counts.sum(axis=-1), 1)
    return 33 + k * np.where(narrow, 1, 2)


def encode(symbols: np.ndarray, freqs: np.ndarray, precision: int, lanes: int,
           top: np.ndarray | None = None, ctxmap: np.ndarray | None = None) -> "bytes | memoryview":
    """freqs: one table (256) or, with contexts, one per context (ntables * 256); symbol i
    then uses table ctxmap[top[i]]. Returns the stream (bytes-like)."""
    n = symbols.size
    dst = np.empty(2 * n + 4 * lanes + 4, np.uint8)  # the stream is written backwards into its end
    if top is None:
        start = _entropy.rans_encode(symbols, freqs, precision, lanes, dst)
    else:
        start = _entropy.rans_encode(symbols, freqs, precision, lanes, dst, top, ctxmap)
    # a view, not a copy: the stream is copied once, when the caller joins its parts
    return memoryview(dst[start:])


def decode(stream: memoryview, freqs: np.ndarray, precision: int, lanes: int, n: int) -> np.ndarray:
    out = np.empty(n, np.uint8)
    decode_into(stream, freqs, precision, lanes, out)
    return out


def decode_into(stream: memoryview, freqs: np.ndarray, precision: int, lanes: int, out: np.ndarray,
                top: np.ndarray | None = None, ctxmap: np.ndarray | None = None,
                other: np.ndarray | None = None, sym_high: bool = True, rotate: bool = False) -> None:
    """Decode into out (n bytes), or, with `other`, into 16-bit elements (out is 2n bytes)
    joining each symbol with other[i]: see _entropy.rans_decode."""
    if other is None:
        consumed = _entropy.rans_decode(stream, freqs, precision, lanes, out, top, ctxmap)
    else:
        consumed = _entropy.rans_decode(stream, freqs, precision, lanes, out, top, ctxmap, other, sym_high, rotate)
    if consumed != len(stream):
        raise CorruptDataError("rANS stream is corrupt (it does not decode to its own end)")
