"""`ans`: rANS with tables fitted to the whole tensor, one per byte plane.

The tensor is split into planes as in `planes` (floats rotated so that the top plane is
the exponent). Each plane is rANS-coded with one table for the whole tensor, or stored raw
when coding would not shrink it by 1% (the mantissa planes of fp32). For 16-bit types the
low plane (7 mantissa bits and the sign) may instead be coded in context of the exponent:
one table for each frequent exponent value and one shared by the rest, which captures
how the mantissa's distribution changes from one binade to the next (the whole 16-bit
symbol's statistics, at the price of a few small tables). The encoder picks whichever of
raw / one table / contexts its size estimate says is smallest.

Coded planes are cut into independent chunks so that threads encode and decode in
parallel, each chunk with `lanes` interleaved states. 16-bit types go through one compiled
call each way (_entropy.ans_encode16 / ans_decode16: planner, chunks on POSIX threads, and
the last plane's decoder writing the final elements, decode and plane join fused); wider
types are planned here in Python, plane by plane, with one table or raw.

Payload, for each plane (most significant first): u8 method, u64 section length, section.
    method 0 raw: the plane's bytes
    method 1 rANS: u8 lanes, table, nchunks x u64 stream sizes, the streams
    method 2 rANS in context of plane 0 (16-bit types, plane 1 only): u8 lanes, u8 K
        (1..63), K u8 exponent values with their own table (contexts 1..K; every other
        value is context 0), K + 1 tables, nchunks x u64 stream sizes, the streams.
        Chosen when the estimate says so: a context needs at least 2048 elements, and
        tensors under 16384 elements use no contexts.
A table is rans.pack_table's. lanes=0 (default) picks lanes per plane (rans.auto_lanes).
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import BadParameterError, CorruptDataError
from ..parallel import pmap
from .entropy import _entropy, rans
from .payload import Reader, check_status
from .planes import PLANE_DTYPES, chunk_spans, join, split, word_size
from .registry import Codec, register
from .scratch import prefault, scratch

RAW, RANS, RANS_CTX = 0, 1, 2
# A plane of a wider type is coded only when that saves at least 1%: fp32's three lower
# planes save 0.3-0.9% each on MiniLM, and decoding them took a quarter of the decode time
# (MiniLM-fp32 decoded into warm buffers at one thread: 51 ms with them coded, 38 ms raw,
# for 0.45% of the size).
RAW_UNLESS = 0.99


def _entropy_bytes(counts: np.ndarray) -> float:
    """Order-0 entropy of rows of counts, in bytes (one value per row)."""
    counts = np.atleast_2d(counts).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = np.where(counts > 0, counts * np.log2(np.where(counts > 0, totals / counts, 1.0)), 0.0)
    return bits.sum(axis=1) / 8


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
            raise BadParameterError(f"ans: contexts must be true or false, got {self.contexts!r}")

    def _streams(self, plane, freqs, lanes, threads) -> list:
        """[chunk sizes, stream, stream, ...]: parts, concatenated once by the caller."""
        streams = pmap(lambda s: rans.encode(plane[s[0] : s[1]], freqs, self.precision, lanes),
                       chunk_spans(plane.size, self.chunk), threads)
        return [np.array([len(s) for s in streams], "<u8").tobytes(), *streams]

    def _encode_plane(self, plane: np.ndarray, threads: int) -> list:
        """Code one plane of a wider type (fp32, fp64, ...): one table, or raw."""
        n = plane.size
        lanes = self.lanes or rans.auto_lanes(min(n, self.chunk))
        counts = rans.histogram(plane)
        estimate = float(_entropy_bytes(counts)[0]) + rans.table_bytes(counts) + (4 * lanes + 10) * len(chunk_spans(n, self.chunk))
        if estimate < RAW_UNLESS * n:
            freqs = rans.quantize(counts, self.precision)
            section = [bytes([lanes]), rans.pack_table(freqs), *self._streams(plane, freqs, lanes, threads)]
            size = sum(len(p) for p in section)
            if size < RAW_UNLESS * n:
                return [struct.pack("<BQ", RANS, size), *section]
        return [struct.pack("<BQ", RAW, n), plane.tobytes()]

    def encode_payload(self, data, dtype, threads):
        word = word_size(dtype)
        n = data.size // word
        if word == 2:
            if data.ctypes.data % 2:  # the compiled path reads aligned 16-bit words
                data = data.copy()
            return _entropy.ans_encode16(data, dtype.is_float, self.precision, self.lanes, self.chunk,
                                         self.contexts, threads)
        planes = split(data, dtype, scratch(data.size))
        return [part for k in range(word) for part in self._encode_plane(planes[k * n : (k + 1) * n], threads)]

    # -- decoding -----------------------------------------------------------------------
    def decode_payload(self, payload, dtype, count, threads, out=None):
        word = word_size(dtype)
        n = count * dtype.itemsize // word
        if word == 2:
            # the whole tensor in one compiled call, its chunks on `threads` threads
            out = np.empty(2 * n, np.uint8) if out is None else out
            if threads > 1 and n > self.chunk:
                rc = _entropy.ans_decode16(payload, self.chunk, self.precision, dtype.is_float, out, threads, scratch(n))
            else:  # one thread decodes in place, without scratch memory
                rc = _entropy.ans_decode16(payload, self.chunk, self.precision, dtype.is_float, out, 1)
            check_status(rc, "ans")
            return out
        r = Reader(payload, "ans")
        sections = []
        for _ in range(word):
            method = r.u8()
            sections.append((method, r.take(r.u64())))
        r.done()
        # the planes are a temporary, except for one-byte types where they are the output
        if word > 1:
            planes = scratch(n * word)
        else:
            planes = np.empty(n, np.uint8) if out is None else out
        for k, (method, body) in enumerate(sections):
            self._decode_plane(method, body, planes[k * n : (k + 1) * n], threads)
        return planes if word == 1 else join(planes, dtype, out, threads)

    faults_in_output = True

    def decode_payloads(self, jobs: list, threads: int, fresh: bool = False, side=None) -> None:
        """16-bit payloads go through one compiled batch: every chunk of every tensor is a
        job, spread over the threads biggest first; fresh output is faulted in just ahead
        of the decoders, on the calling thread while the others decode, which then runs
        side (a parallel.SideTask) before it decodes too (with one thread, side runs on
        the pool)."""
        wide = [j for j in jobs if word_size(j[1]) != 2]
        narrow = [j for j in jobs if word_size(j[1]) == 2]
        if side is not None and (threads <= 1 or not narrow):
            side.start(threads)  # one decoding thread: it would only wait for side; the pool has a core
        if narrow:
            rcs = _entropy.ans_decode16_batch([(p, out, self.chunk, self.precision, d.is_float) for p, d, c, out in narrow],
                                              threads, fresh, side.run if side is not None else None)
            for rc in rcs:
                check_status(rc, "ans")
        if wide:
            if fresh:
                prefault([j[3] for j in wide])
            super().decode_payloads(wide, threads)

    def to_device(self, payload, dtype, count, device):
        """16-bit payloads decode on a GPU (nzip/kernels/ans.py); others on the CPU."""
        import torch

        if torch.device(device).type != "cuda" or word_size(dtype) != 2 or dtype.kind == "c":
            return None
        from ..kernels import ans as gpu

        return gpu.upload(payload, count, self.chunk, self.precision, dtype, device)

    def decode_on_device(self, resident_list, outs=None, check=True):
        from ..kernels import ans as gpu

        return gpu.decode_batch(resident_list, outs, check)

    def _decode_plane(self, method: int, body: memoryview, out: np.ndarray, threads: int) -> None:
        n = out.size
        if method == RAW:
            if len(body) != n:
                raise CorruptDataError("ans: raw plane has the wrong length")
            out[:] = np.frombuffer(body, np.uint8)
            return
        if method != RANS:  # (context coding exists for 16-bit types only)
            raise CorruptDataError(f"ans: unknown plane method {method}")
        spans = chunk_spans(n, self.chunk)
        r = Reader(body, "ans")
        lanes = r.u8()
        if not 1 <= lanes <= rans.MAX_LANES:
            raise CorruptDataError(f"ans: bad lane count {lanes}")
        freqs, r.pos = rans.unpack_table(body, r.pos, self.precision)
        sizes = r.array("<u8", len(spans))
        streams = [r.take(int(s)) for s in sizes]
        r.done()
        pmap(lambda i: rans.decode_into(streams[i], freqs, self.precision, lanes, out[spans[i][0] : spans[i][1]]),
             range(len(spans)), threads)
