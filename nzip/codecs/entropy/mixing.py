"""Context-mixing coding: integers coded bit by bit, each bit's probability mixed from
several context models by a logistic mixer that learns which to trust (a loop in _mixing.c).

    models = [Model(ctx_a), Model(ctx_b, ref=earlier, shift=2)]
    blob = encode(values, models)            # contexts: what the decoder knows before each value
    values = decode(blob, models)

Where adaptive (one frequency table per context) must split its samples between contexts,
here every model sees every value, so one coder can take a fine context, a coarse one and
the symbol this stream gave at an earlier position (ref[i] < i: the Gaussian before, a
spatial neighbour) together. A model's context is any integers, one per value; both sides
number the distinct ones in sorted order. `mix` picks the mixer's weight set (a small
integer per value). Layout: u32 count, u16 alphabet size K, u8 mixer rate, u8 alphabet
form; the alphabet, as adaptive's (LEB128 gaps) or, where smaller, as its first value
(zigzag LEB128), the span less one (LEB128) and a bitmap of the values in it; then the
arithmetic coder's bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ...errors import CorruptDataError
from . import _mixing
from .adaptive import MAX_ALPHABET, _read_alphabet, _write_alphabet, ranks, read_varint, symbols_of, varint

HEAD = struct.Struct("<IHBB")  # count, alphabet size, mixer rate, alphabet form (0 gaps, 1 bitmap)
RATES = (4, 12, 32)  # the mixer's learning rates the encoder tries (a stream keeps its best)
NO_REF = 255


@dataclass
class Model:
    """One context model: `context` (ints per value, None: one context) joined, when `ref`
    is given, with the symbol at position ref[i] < i (-1: none) shifted down by `shift`."""

    context: np.ndarray | None = None
    ref: np.ndarray | None = None
    shift: int = 0


def _inputs(models: list[Model], n: int, mix: np.ndarray | None):
    if not 1 <= len(models) <= 16:
        raise ValueError("mixing takes 1 to 16 models")
    ctx, rows, refs, shifts = [], [], [], []
    for m in models:
        if m.context is None:
            ids, count = np.zeros(n, np.uint32), 1
        else:
            c = np.asarray(m.context).reshape(-1)
            if len(c) != n:
                raise ValueError(f"{len(c)} contexts for {n} values")
            ids, count = ranks(c)
        ctx.append(ids.astype(np.uint32).reshape(-1))
        rows.append(count)
        if m.ref is None:
            refs.append(np.full(n, -1, np.int32))
            shifts.append(NO_REF)
        else:
            r = np.asarray(m.ref).reshape(-1)
            if len(r) != n or not 0 <= m.shift <= 15:
                raise ValueError("a model's ref needs one position per value and a shift in 0..15")
            refs.append(r.astype(np.int32))
            shifts.append(m.shift)
    if mix is None:
        mixctx, nmix = np.zeros(n, np.uint32), 1
    else:
        mixctx, nmix = ranks(np.asarray(mix).reshape(-1))
    return (np.concatenate(ctx) if n else np.zeros(0, np.uint32), np.array(rows, np.uint32),
            np.concatenate(refs) if n else np.zeros(0, np.int32), bytes(shifts), mixctx.astype(np.uint32), nmix)


def _alphabet(alphabet: np.ndarray) -> tuple[int, bytes]:
    """(form, bytes): the LEB128 gaps or a bitmap over the span, whichever is shorter."""
    gaps = _write_alphabet(alphabet)
    span = int(alphabet[-1]) - int(alphabet[0])
    if span >= 1 << 20:
        return 0, gaps
    bits = np.zeros(span + 1, np.uint8)
    bits[alphabet - alphabet[0]] = 1
    bitmap = _write_alphabet(alphabet[:1]) + varint(span) + np.packbits(bits, bitorder="little").tobytes()
    return (1, bitmap) if len(bitmap) < len(gaps) else (0, gaps)


def _read_bitmap(blob: bytes, at: int, k: int) -> tuple[np.ndarray, int]:
    first, at = _read_alphabet(blob, at, 1)
    span, at = read_varint(blob, at, "mixing stream")
    if span >= 1 << 20 or at + (span + 8) // 8 > len(blob):
        raise CorruptDataError("mixing stream: its alphabet is truncated or corrupt")
    bits = np.unpackbits(np.frombuffer(blob, np.uint8, (span + 8) // 8, at), bitorder="little")[: span + 1]
    values = first[0] + np.flatnonzero(bits)
    if len(values) != k:
        raise CorruptDataError("mixing stream: its alphabet does not match its size")
    return values.astype(np.int64), at + (span + 8) // 8


def encode(values: np.ndarray, models: list[Model], mix: np.ndarray | None = None, rate: int | None = None) -> bytes:
    values = np.asarray(values).reshape(-1)
    alphabet, symbols = symbols_of(values, "mixing")
    k = len(alphabet)
    ctx, rows, refs, shifts, mixctx, nmix = _inputs(models, len(values), mix)
    symbols = symbols.astype(np.uint16)
    best = None
    for r in RATES if rate is None else (rate,):
        dst = bytearray(len(values) * 2 + 64)  # p >= 1/4096: at most 12 bits a bit, 12 bits a symbol
        written = _mixing.mix_encode(symbols, k, ctx, rows, refs, shifts, mixctx, nmix, r, dst)
        if written > len(dst):
            raise AssertionError("mixing coder overran its buffer")
        if best is None or written < len(best[1]):
            best = (r, bytes(dst[:written]))
    form, table = _alphabet(alphabet.astype(np.int64))
    return HEAD.pack(len(values), k, best[0], form) + table + best[1]


def decode(blob: bytes, models: list[Model], mix: np.ndarray | None = None) -> np.ndarray:
    """The int64 values; CorruptDataError where the blob cannot be what encode() wrote."""
    if len(blob) < HEAD.size:
        raise CorruptDataError("mixing stream shorter than its header")
    n, k, rate, form = HEAD.unpack_from(blob)
    if k < 1 or k > MAX_ALPHABET or form > 1:
        raise CorruptDataError(f"mixing stream header is corrupt ({k} symbols, alphabet form {form})")
    alphabet, body = (_read_bitmap if form else _read_alphabet)(blob, HEAD.size, k)
    for m in models:
        for a in (m.context, m.ref):
            if a is not None and np.asarray(a).size != n:
                raise CorruptDataError(f"mixing stream holds {n} values, the caller expects {np.asarray(a).size}")
    ctx, rows, refs, shifts, mixctx, nmix = _inputs(models, n, mix)
    out = np.empty(n, np.uint16)
    consumed = _mixing.mix_decode(memoryview(blob)[body:], k, ctx, rows, refs, shifts, mixctx, nmix, rate, out)
    if consumed < 0:
        raise CorruptDataError("mixing stream is corrupt (a symbol outside its alphabet)")
    if consumed > len(blob) - body:
        raise CorruptDataError("mixing stream is truncated")
    return alphabet[out].astype(np.int64)
