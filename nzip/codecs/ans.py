"""`ans`: rANS with tables fitted to the whole tensor, one per byte plane.

The tensor is split into planes as in `planes` (floats rotated so that the top plane is
the exponent). Each plane is rANS-coded with one table for the whole tensor, or stored raw
when coding would not shrink it (the low mantissa planes of fp32). For 16-bit types the
low plane (7 mantissa bits and the sign) may instead be coded in context of the exponent:
one table for each frequent exponent value and one shared by the rest, which captures
how the mantissa's distribution changes from one binade to the next (the whole 16-bit
symbol's statistics, at the price of a few small tables). The encoder picks whichever of
raw / one table / contexts its size estimate says is smallest.

Coded planes are cut into independent chunks so that threads encode and decode in
parallel, each chunk with `lanes` interleaved states; for 16-bit types the last plane's
decoder writes the final elements directly (decode and plane join fused in one pass).

Payload, for each plane (most significant first): u8 method, u64 section length, section.
    method 0 raw: the plane's bytes
    method 1 rANS: u8 lanes, table, nchunks x u64 stream sizes, the streams
    method 2 rANS in context of plane 0 (16-bit types, plane 1 only): u8 lanes, u8 K,
        K u8 exponent values with their own table (contexts 1..K; every other value is
        context 0), K + 1 tables, nchunks x u64 stream sizes, the streams
A table is rans.pack_table's. lanes=0 (default) picks lanes per plane (rans.auto_lanes).
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
from .scratch import scratch

RAW, RANS, RANS_CTX = 0, 1, 2
MAX_CONTEXTS = 63
CONTEXT_MIN = 1 << 14  # smaller tensors cannot pay for extra tables


def _entropy_bytes(counts: np.ndarray) -> float:
    """Order-0 entropy of rows of counts, in bytes (one value per row)."""
    counts = np.atleast_2d(counts).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = np.where(counts > 0, counts * np.log2(np.where(counts > 0, totals / counts, 1.0)), 0.0)
    return bits.sum(axis=1) / 8


def choose_contexts(joint: np.ndarray) -> tuple[list[int], float]:
    """From the 256 x 256 joint histogram (exponent, low byte): the exponent values that
    should get a table of their own, most frequent first, and the estimated plane size."""
    joint = joint.astype(np.int64)  # (unsigned counts would wrap around when negated)
    rows = joint.sum(axis=1)
    order = np.argsort(-rows, kind="stable")[: min(MAX_CONTEXTS, int((rows > 0).sum()))]
    total = joint.sum(axis=0)
    own = _entropy_bytes(joint[order]) + rans.table_bytes(joint[order])
    # rest[k] = what is left for the shared table when the first k+1 contexts have their own
    rest = total[None, :] - np.cumsum(joint[order], axis=0)
    rest_cost = rans.table_bytes(rest) + _entropy_bytes(rest)
    costs = np.cumsum(own) + rest_cost + 2 + np.arange(1, order.size + 1)
    plain = float(_entropy_bytes(total)[0]) + rans.table_bytes(total)
    if order.size == 0 or costs.min() >= plain:
        return [], plain
    k = int(np.argmin(costs))
    return [int(v) for v in order[: k + 1]], float(costs[k])


@register
class Ans(Codec):
    codec_id = "ans"
    params = {"precision": 12, "lanes": 0, "chunk": 1 << 20, "contexts": True}
    dtypes = PLANE_DTYPES

    def validate(self):
        self._check_int("precision", rans.MIN_PRECISION, rans.MAX_PRECISION)
        self._check_int("lanes", 0, rans.MAX_LANES)
        self._check_int("chunk", 1 << 10, 1 << 30)
        if not isinstance(self.contexts, bool):
            from ..errors import BadParameterError

            raise BadParameterError(f"ans: contexts must be true or false, got {self.contexts!r}")

    def _spans(self, n: int) -> list[tuple[int, int]]:
        return [(a, min(a + self.chunk, n)) for a in range(0, n, self.chunk)]

    def _streams(self, plane, freqs, lanes, threads, top=None, ctxmap=None) -> list:
        """[chunk sizes, stream, stream, ...]: parts, concatenated once by the caller."""
        streams = pmap(lambda s: rans.encode(plane[s[0] : s[1]], freqs, self.precision, lanes,
                                             None if top is None else top[s[0] : s[1]], ctxmap),
                       self._spans(plane.size), threads)
        return [np.array([len(s) for s in streams], "<u8").tobytes(), *streams]

    def _encode_plane(self, plane: np.ndarray, threads: int, counts: np.ndarray | None = None,
                      top: np.ndarray | None = None, joint: np.ndarray | None = None) -> list:
        """Code one plane by the cheapest method; with `top` and its joint histogram
        (top x plane), context coding is considered too."""
        n = plane.size
        lanes = self.lanes or rans.auto_lanes(min(n, self.chunk))
        state_bytes = (4 * lanes + 10) * len(self._spans(n))
        if counts is None:
            counts = rans.histogram(plane)
        plain = float(_entropy_bytes(counts)[0]) + rans.table_bytes(counts) + state_bytes
        contexts, ctx_cost = [], float("inf")
        if joint is not None:
            contexts, ctx_cost = choose_contexts(joint)
            ctx_cost += state_bytes
        if contexts and ctx_cost < min(plain, n):
            rest = counts - joint[contexts].sum(axis=0)
            freqs = np.stack([rans.quantize(rest, self.precision)] +
                             [rans.quantize(joint[v], self.precision) for v in contexts])
            ctxmap = np.zeros(256, np.uint8)
            ctxmap[contexts] = np.arange(1, len(contexts) + 1)
            section = [bytes([lanes, len(contexts)]), bytes(contexts), *(rans.pack_table(f) for f in freqs),
                       *self._streams(plane, freqs.reshape(-1), lanes, threads, top, ctxmap)]
            size = sum(len(p) for p in section)
            if size < n:
                return [struct.pack("<BQ", RANS_CTX, size), *section]
        if plain < n:
            freqs = rans.quantize(counts, self.precision)
            section = [bytes([lanes]), rans.pack_table(freqs), *self._streams(plane, freqs, lanes, threads)]
            size = sum(len(p) for p in section)
            if size < n:
                return [struct.pack("<BQ", RANS, size), *section]
        return [struct.pack("<BQ", RAW, n), plane.tobytes()]

    def encode_payload(self, data, dtype, threads):
        word = word_size(dtype)
        n = data.size // word
        if word == 2 and data.ctypes.data % 2 == 0:
            return self._encode16(data, dtype, n, threads)
        planes = split(data, dtype, scratch(data.size))
        return [part for k in range(word) for part in self._encode_plane(planes[k * n : (k + 1) * n], threads)]

    def _encode16(self, data, dtype, n, threads):
        """16-bit types: split and histogram chunk by chunk in parallel, then code the
        exponent plane, and the low plane in context of it when that pays."""
        planes = scratch(2 * n)
        top, low = planes[:n], planes[n:]
        with_contexts = self.contexts and n >= CONTEXT_MIN

        def prepare(span):
            a, b = span
            _entropy.split16(data[2 * a : 2 * b], top[a:b], low[a:b], dtype.is_float)
            counts = np.zeros(1 << 16 if with_contexts else 512, np.uint64)
            if with_contexts:
                _entropy.joint_histogram(top[a:b], low[a:b], counts)
            else:
                _entropy.histogram(top[a:b], counts[:256])
                _entropy.histogram(low[a:b], counts[256:])
            return counts

        parts = pmap(prepare, self._spans(n), threads)
        counts = parts[0] if len(parts) == 1 else np.sum(parts, axis=0, dtype=np.uint64) if parts else np.zeros(512, np.uint64)
        if not with_contexts:
            return (self._encode_plane(top, threads, counts[:256])
                    + self._encode_plane(low, threads, counts[256:512]))
        joint = counts.reshape(256, 256)
        return (self._encode_plane(top, threads, joint.sum(axis=1))
                + self._encode_plane(low, threads, joint.sum(axis=0), top, joint))

    # -- decoding -----------------------------------------------------------------------
    def _read_section(self, method: int, body: memoryview, n: int) -> dict:
        spans = self._spans(n)
        r = Reader(body, "ans")
        if method == RAW:
            if len(body) != n:
                raise CorruptDataError("ans: raw plane has the wrong length")
            return {"method": RAW, "raw": body}
        if method not in (RANS, RANS_CTX):
            raise CorruptDataError(f"ans: unknown plane method {method}")
        lanes = r.u8()
        if not 1 <= lanes <= rans.MAX_LANES:
            raise CorruptDataError(f"ans: bad lane count {lanes}")
        ctxmap = None
        ntables = 1
        if method == RANS_CTX:
            k = r.u8()
            values = r.array("u1", k)
            if k == 0 or k > MAX_CONTEXTS or len(set(values.tolist())) != k:
                raise CorruptDataError("ans: bad context list")
            ctxmap = np.zeros(256, np.uint8)
            ctxmap[values] = np.arange(1, k + 1)
            ntables = k + 1
        tables = []
        for _ in range(ntables):
            freqs, r.pos = rans.unpack_table(body, r.pos, self.precision)
            tables.append(freqs)
        sizes = r.array("<u8", len(spans))
        streams = [r.take(int(s)) for s in sizes]
        r.done()
        return {"method": method, "lanes": lanes, "freqs": np.concatenate(tables), "ctxmap": ctxmap,
                "streams": streams}

    def _decode_plane(self, sec: dict, out: np.ndarray, threads: int, top=None, other=None,
                      sym_high=True, rotate=False) -> None:
        """Decode a plane into out (n bytes), or fused with `other` into 2n bytes."""
        if sec["method"] == RAW:
            out[:] = np.frombuffer(sec["raw"], np.uint8)
            return
        spans = self._spans(out.size if other is None else out.size // 2)
        scale = 1 if other is None else 2

        def run(i):
            a, b = spans[i]
            rans.decode_into(sec["streams"][i], sec["freqs"], self.precision, sec["lanes"], out[scale * a : scale * b],
                             None if sec["ctxmap"] is None else top[a:b], sec["ctxmap"],
                             None if other is None else other[a:b], sym_high, rotate)

        pmap(run, range(len(spans)), threads)

    def decode_payload(self, payload, dtype, count, threads):
        word = word_size(dtype)
        n = count * dtype.itemsize // word
        if word == 2 and (threads == 1 or n <= self.chunk):
            # the whole tensor in one compiled call (same layout, same checks)
            out = np.empty(2 * n, np.uint8)
            rc = _entropy.ans_decode16(payload, self.chunk, self.precision, dtype.is_float, out, scratch(n))
            if rc == -2:
                raise MemoryError("ans: out of memory")
            if rc != 0:
                raise CorruptDataError("ans: payload is corrupt")
            return out
        r = Reader(payload, "ans")
        sections = []
        for k in range(word):
            method = r.u8()
            if method == RANS_CTX and not (word == 2 and k == 1):
                raise CorruptDataError("ans: context coding is only defined for the low plane of 16-bit types")
            sections.append(self._read_section(method, r.take(r.u64()), n))
        r.done()
        rotate = dtype.is_float
        if word == 2 and sections[1]["method"] == RANS_CTX:
            # exponent plane first; the low plane's contexts need it, and it joins the output
            top, out = scratch(n), np.empty(2 * n, np.uint8)
            self._decode_plane(sections[0], top, threads)
            self._decode_plane(sections[1], out, threads, top=top, other=top, sym_high=False, rotate=rotate)
            return out
        if word == 2 and sections[0]["method"] != RAW:
            low, out = scratch(n), np.empty(2 * n, np.uint8)
            self._decode_plane(sections[1], low, threads)
            self._decode_plane(sections[0], out, threads, other=low, sym_high=True, rotate=rotate)
            return out
        # the planes are a temporary, except for one-byte types where they are the output
        planes = scratch(n * word) if word > 1 else np.empty(n, np.uint8)
        for k in range(word):
            self._decode_plane(sections[k], planes[k * n : (k + 1) * n], threads)
        return join(planes, dtype)
