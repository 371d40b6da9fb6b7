"""Adaptive context coding: integers coded with a frequency table per context, tables learnt
on the fly (a range coder in _entropy.c), so nothing but the alphabet is stored.

    blob = encode(values, contexts)        # contexts: what the decoder knows before each value
    values = decode(blob, contexts)

The caller derives `contexts` (any integers, one per value) from data the decoder has
already decoded: other fields, earlier streams. Both sides number the distinct contexts in
sorted order, so only their count matters to the tables' size. Layout: u32 count, u16
alphabet size K, the K distinct values (ascending) as LEB128 varints: the first zigzagged,
then the gaps less one; then the range coder's bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from ...errors import CorruptDataError
from . import _entropy

MAX_ALPHABET = 4096
MAX_TABLE = 1 << 26  # contexts x alphabet: 128 MiB of uint16 counts at most
HEAD = struct.Struct("<IH")


def _dense(contexts: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    if contexts is None:
        return np.zeros(n, np.uint32), 1
    contexts = np.asarray(contexts).reshape(-1)
    if len(contexts) != n:
        raise ValueError(f"{len(contexts)} contexts for {n} values")
    return ranks(contexts)


def ranks(c: np.ndarray) -> tuple[np.ndarray, int]:
    """Each context's rank among the distinct ones (np.unique's inverse, without its sort
    where the contexts are small non-negative integers), and how many there are (>= 1)."""
    if c.size == 0:
        return np.zeros(0, np.uint32), 1
    lo, hi = (int(c.min()), int(c.max())) if c.dtype.kind in "iu" else (-1, 0)
    if lo >= 0 and hi < max(4 * c.size, 1 << 16):
        present = np.zeros(hi + 1, bool)
        present[c] = True
        rank = np.cumsum(present) - 1
        return rank[c].astype(np.uint32), int(rank[-1]) + 1
    _, ids = np.unique(c, return_inverse=True)
    return ids.astype(np.uint32).reshape(-1), int(ids.max()) + 1


def varint(v: int) -> bytes:
    """LEB128: 7 bits a byte, low first, the top bit set on all but the last."""
    out = bytearray()
    while v >= 128:
        out.append(128 | (v & 127))
        v >>= 7
    out.append(v)
    return bytes(out)


def _write_alphabet(alphabet: np.ndarray) -> bytes:
    first = int(alphabet[0])
    numbers = [2 * first if first >= 0 else -2 * first - 1] + (np.diff(alphabet) - 1).tolist()
    return b"".join(map(varint, numbers))


def read_varint(blob: bytes, at: int, what: str = "adaptive stream") -> tuple[int, int]:
    """(the LEB128 number at `at`, where it ends); CorruptDataError past the end or 64 bits."""
    v = shift = 0
    while True:
        if at >= len(blob) or shift > 63:
            raise CorruptDataError(f"{what}: its alphabet is truncated or corrupt")
        byte = blob[at]
        at += 1
        v |= (byte & 127) << shift
        shift += 7
        if byte < 128:
            return v, at


def _read_alphabet(blob: bytes, at: int, k: int) -> tuple[np.ndarray, int]:
    numbers = []
    for _ in range(k):
        v, at = read_varint(blob, at)
        numbers.append(v)
    first = numbers[0] >> 1 if numbers[0] % 2 == 0 else -(numbers[0] >> 1) - 1
    values = first + np.cumsum([0] + [g + 1 for g in numbers[1:]], dtype=object)
    if values[-1] >= 1 << 63 or first < -(1 << 63):
        raise CorruptDataError("adaptive stream: its alphabet is out of range")
    return values.astype(np.int64), at


def symbols_of(values: np.ndarray, coder: str) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values ascending, at least one; each value's index among them)."""
    values = np.asarray(values).reshape(-1)
    alphabet, symbols = np.unique(values, return_inverse=True)
    if len(alphabet) > MAX_ALPHABET:
        raise ValueError(f"{len(alphabet)} distinct values: {coder} coding takes at most {MAX_ALPHABET}")
    return (alphabet if len(alphabet) else np.zeros(1, np.int64)), symbols.reshape(-1)


def encode(values: np.ndarray, contexts: np.ndarray | None = None) -> bytes:
    values = np.asarray(values).reshape(-1)
    alphabet, symbols = symbols_of(values, "adaptive")
    k = len(alphabet)
    ids, nctx = _dense(contexts, len(values))
    if nctx * k > MAX_TABLE:
        raise ValueError(f"{nctx} contexts x {k} symbols: too many tables")
    dst = bytearray(len(values) * 2 + 64)  # a symbol never costs 16 bits: K <= 4096, total <= 2^16
    written = _entropy.adaptive_encode(symbols.astype(np.uint16), ids, nctx, k, dst)
    if written > len(dst):
        raise AssertionError("adaptive coder overran its buffer")
    return HEAD.pack(len(values), k) + _write_alphabet(alphabet.astype(np.int64)) + bytes(dst[:written])


def decode(blob: bytes, contexts: np.ndarray | None = None) -> np.ndarray:
    """The int64 values; CorruptDataError where the blob cannot be what encode() wrote."""
    if len(blob) < HEAD.size:
        raise CorruptDataError("adaptive stream shorter than its header")
    n, k = HEAD.unpack_from(blob)
    if k < 1 or k > MAX_ALPHABET:
        raise CorruptDataError(f"adaptive stream header is corrupt ({k} symbols)")
    alphabet, body = _read_alphabet(blob, HEAD.size, k)
    if contexts is not None and np.asarray(contexts).size != n:
        raise CorruptDataError(f"adaptive stream holds {n} values, the caller expects {np.asarray(contexts).size}")
    ids, nctx = _dense(contexts, n)
    if nctx * k > MAX_TABLE:
        raise CorruptDataError(f"adaptive stream: {nctx} contexts x {k} symbols")
    out = np.empty(n, np.uint16)
    consumed = _entropy.adaptive_decode(memoryview(blob)[body:], ids, nctx, k, out)
    if consumed > len(blob) - body:
        raise CorruptDataError("adaptive stream is truncated")
    return alphabet[out].astype(np.int64)
