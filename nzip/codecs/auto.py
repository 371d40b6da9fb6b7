"""codec="auto": the lossless codec nzip picks for a tensor, by dtype and a quick sample.

Measured on real weights (tools/bench_weights.py): `ans` is the smallest for 16-bit and
8-bit floats on every model we tried, `planes` for fp32/fp64 (per-chunk tables follow the
mantissa's high byte better); integers and bools usually hold runs and patterns, which
zstd finds; tiny tensors are not worth a table.

Where a dtype has several candidates (bf16: ans, planes, dfloat11; fp16 and fp8: ans,
planes; fp32/fp64: planes with chunks of 256K or of 64K elements, which pays off on
embedding tables whose rows differ) and the tensor is large, a sample of it (1/32 of its elements in four evenly
spaced windows, at least 32K elements) is encoded with each and the smallest wins; small
tensors take the first candidate without sampling. Lossy codecs are never candidates.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import DType
from ..errors import BadParameterError
from .registry import Codec, get

TINY_BYTES = 1024
SAMPLE_ELEMENTS = 1 << 15  # the least a sample holds; tensors under 32x this take the first candidate
SAMPLE_SHARE = 32
WINDOWS = 4


def candidates(dtype: DType, nbytes: int) -> list:
    """The codecs (names or configs) worth trying for this dtype, the usual winner first."""
    if nbytes < TINY_BYTES:
        return ["raw"]
    if dtype.name == "bfloat16":
        return ["ans", "planes", "dfloat11"]
    if dtype.kind == "f" and dtype.itemsize <= 2:
        return ["ans", "planes"]
    if dtype.kind in "fc":  # smaller chunks follow tables whose rows differ (embeddings)
        return ["planes", {"id": "planes", "chunk": 1 << 16}]
    return ["zstd"]


def sample(raw: np.ndarray, itemsize: int) -> np.ndarray:
    """WINDOWS evenly spaced contiguous windows of the tensor's elements, as bytes."""
    n = raw.size // itemsize
    take = max(SAMPLE_ELEMENTS, n // SAMPLE_SHARE) // WINDOWS
    starts = np.linspace(0, n - take, WINDOWS).astype(np.int64)
    return np.concatenate([raw[s * itemsize : (s + take) * itemsize] for s in starts])


def choose(dtype: DType, raw: np.ndarray | None = None, nbytes: int | None = None) -> Codec:
    """The codec for a tensor of this dtype; with its bytes `raw`, large tensors are sampled."""
    nbytes = raw.size if raw is not None else nbytes or 0
    names = candidates(dtype, nbytes)
    if len(names) == 1 or raw is None or raw.size < SAMPLE_SHARE * SAMPLE_ELEMENTS * dtype.itemsize:
        return get(names[0])
    piece = sample(raw, dtype.itemsize)
    sizes = []
    for name in names:
        payload = get(name).encode_payload(piece, dtype, 1)
        parts = payload if isinstance(payload, list) else [payload]
        sizes.append(sum(memoryview(p).nbytes for p in parts))
    return get(names[int(np.argmin(sizes))])


def resolve(codec, dtype: DType, raw_or_nbytes) -> Codec:
    """`codec` may be "auto", a name, a config dict or a Codec instance. The third argument
    is the tensor's bytes (lets auto sample them) or just their count. Containers (save,
    pack, DCP) resolve their codecs here and store tensors bit-exact, so lossy codecs are
    refused: their bytes would fail the container's checksum of the original."""
    if codec is None or codec == "auto":
        if isinstance(raw_or_nbytes, np.ndarray):
            return choose(dtype, raw=raw_or_nbytes)
        return choose(dtype, nbytes=int(raw_or_nbytes))
    chosen = get(codec)
    if chosen.lossy:
        raise BadParameterError(f"codec {chosen.codec_id!r} is lossy; containers store tensors bit-exact "
                                "(use codecs.encode for lossy codecs)")
    return chosen
