"""`gear`: training-free lossy codec for activations and KV caches (GEAR, Kang et al. 2024).

    blob = codecs.encode(kv, "gear", bits=4)        # fp32 / fp16 / bf16, any shape
    approx = codecs.decode(blob)                     # same dtype and shape

The tensor is viewed as rows of its last dimension (tokens x channels). Three parts:
  outliers   the `outliers` fraction of entries of largest magnitude, kept exactly as
             float16 with their positions (GEAR's sparse S)
  dense      the rest, uniformly quantized to `bits` bits per value in groups of `group`
             consecutive values of a row, each group with its own float16 min and step
  low rank   what the two leave, approximated at rank `rank` by power iteration (GEAR's L)
             and stored as two float16 factors
decoded = dense + low rank, with the outliers put back exactly. The quantized codes, the
outlier positions and the factors are then squeezed by zstd (the paper packs bits; an
entropy coder spends fewer on the peaked code histogram of activations).
With outliers=0 and rank=0 it is plain group-wise uniform quantization.

Payload: u8 layout version (1), u64 rows, u64 cols, u64 outlier count, u32 groups per
row, u8 rank, then one zstd frame of: codes (u8, rows x groups x group), group minimums
and steps (f16 each), outlier positions (u64 deltas), outlier values (f16), factors A
(f16, rows x rank) and B (f16, rank x cols). The frame's checksum covers it all.
"""

from __future__ import annotations

import struct

import numpy as np

from ..codecs.entropy import zstd
from ..codecs.registry import Codec, register
from ..dtypes import DType, float32_to_bytes, float32_values
from ..errors import BadParameterError, CorruptDataError

_HEAD = struct.Struct("<BQQQI")
VERSION = 1


def low_rank(residual: np.ndarray, rank: int, iterations: int = 3, seed: int = 0):
    """Rank-`rank` factors (A, B), A @ B ~ residual, by power (subspace) iteration."""
    rows, cols = residual.shape
    rank = min(rank, rows, cols)
    if rank == 0:
        return np.zeros((rows, 0), np.float32), np.zeros((0, cols), np.float32)
    q = np.random.default_rng(seed).standard_normal((cols, rank)).astype(np.float32)
    for _ in range(iterations):
        p, _ = np.linalg.qr(residual @ q)
        q = residual.T @ p
    p, _ = np.linalg.qr(residual @ q)
    return p.astype(np.float32), (p.T @ residual).astype(np.float32)


@register
class Gear(Codec):
    codec_id = "gear"
    params = {"bits": 4, "group": 64, "outliers": 0.02, "rank": 4, "level": 9}
    dtypes = frozenset({"float32", "float16", "bfloat16"})
    lossy = True
    takes_shape = True

    def validate(self) -> None:
        self._check_int("bits", 1, 8)
        self._check_int("group", 2, 1 << 20)
        self._check_int("rank", 0, 256)
        self._check_int("level", 1, 22)
        if isinstance(self.outliers, bool) or not isinstance(self.outliers, (int, float)) or not 0 <= self.outliers <= 0.5:
            raise BadParameterError(f"gear: outliers must be a fraction in [0, 0.5], got {self.outliers!r}")

    def encode_payload(self, data: np.ndarray, dtype: DType, threads: int, shape: tuple = ()) -> bytes:
        cols = int(shape[-1]) if len(shape) else 1
        x = float32_values(data, dtype)
        rows = x.size // cols if cols else 0
        x = x.reshape(rows, cols)
        if not np.isfinite(x).all():
            raise BadParameterError("gear: the tensor holds NaN or infinity (a lossy codec cannot keep them)")
        # outliers: the largest magnitudes, exactly as float16
        k = int(round(self.outliers * x.size))
        flat = x.reshape(-1)
        positions = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:]) if k else np.zeros(0, np.int64)
        values = flat[positions].astype(np.float16)
        dense = flat.copy()
        dense[positions] = 0
        # group-wise uniform quantization of each row
        groups = -(-cols // self.group) if cols else 0
        padded = np.zeros((rows, groups * self.group), np.float32)
        padded[:, :cols] = dense.reshape(rows, cols)
        if cols % self.group:  # the padding repeats the row's last value: no range widening
            padded[:, cols:] = padded[:, cols - 1:cols]
        g = padded.reshape(rows, groups, self.group)
        lo = g.min(axis=2).astype(np.float16)
        step = ((g.max(axis=2) - lo.astype(np.float32)) / ((1 << self.bits) - 1)).astype(np.float16)
        lo32, step32 = lo.astype(np.float32)[..., None], step.astype(np.float32)[..., None]
        safe = np.where(step32 > 0, step32, 1)
        codes = np.clip(np.rint((g - lo32) / safe), 0, (1 << self.bits) - 1).astype(np.uint8)
        approx = (codes * step32 + lo32).reshape(rows, groups * self.group)[:, :cols]
        # low rank of what is left (outlier positions excluded: they are exact)
        residual = x - approx
        residual.reshape(-1)[positions] = 0
        a, b = low_rank(residual, self.rank)
        deltas = np.diff(positions, prepend=0).astype(np.uint64)
        body = b"".join(part.tobytes() for part in (codes, lo, step, deltas, values, a.astype(np.float16),
                                                    b.astype(np.float16)))
        head = _HEAD.pack(VERSION, rows, cols, k, groups)
        return head + struct.pack("<B", a.shape[1]) + zstd.compress(body, self.level, threads)

    def decode_payload(self, payload, dtype: DType, count: int, threads: int, out=None) -> np.ndarray:
        if len(payload) < _HEAD.size + 1:
            raise CorruptDataError("gear: payload is truncated")
        version, rows, cols, k, groups = _HEAD.unpack_from(payload)
        rank = payload[_HEAD.size]
        if version != VERSION:
            raise CorruptDataError(f"gear: unknown payload layout {version}")
        if rows * cols != count or k > count or groups != (-(-cols // self.group) if cols else 0) or rank > self.rank:
            raise CorruptDataError("gear: payload header does not match the frame (corrupt)")
        sizes = [rows * groups * self.group, rows * groups * 2, rows * groups * 2, k * 8, k * 2,
                 rows * rank * 2, rank * cols * 2]
        body = np.frombuffer(zstd.decompress(payload[_HEAD.size + 1:], sum(sizes)), np.uint8)
        parts, at = [], 0
        for n in sizes:
            parts.append(body[at:at + n])
            at += n
        codes = parts[0].reshape(rows, groups, self.group).astype(np.float32)
        lo = parts[1].view(np.float16).astype(np.float32).reshape(rows, groups, 1)
        step = parts[2].view(np.float16).astype(np.float32).reshape(rows, groups, 1)
        x = (codes * step + lo).reshape(rows, groups * self.group)[:, :cols]
        if rank:
            a = parts[5].view(np.float16).astype(np.float32).reshape(rows, rank)
            b = parts[6].view(np.float16).astype(np.float32).reshape(rank, cols)
            x = x + a @ b
        positions = np.cumsum(parts[3].view(np.uint64)).astype(np.int64) if k else np.zeros(0, np.int64)
        if k and (positions[-1] >= count or np.any(np.diff(positions) <= 0)):
            raise CorruptDataError("gear: outlier positions are corrupt")
        flat = np.ascontiguousarray(x, np.float32).reshape(-1)
        flat[positions] = parts[4].view(np.float16).astype(np.float32)
        raw = float32_to_bytes(flat, dtype).reshape(-1)
        if out is None:
            return raw.copy()
        out[:] = raw
        return out
