"""codec="auto": the lossless codec nzip picks for a tensor by its dtype and size.

Measured on real weights (tools/bench_weights.py): `ans` is the smallest for 16-bit and
8-bit floats (its exponent contexts), `planes` for fp32/fp64 (per-chunk tables follow the
mantissa's high byte better); integers and bools usually hold runs and patterns, which
zstd finds; tiny tensors are not worth a table.
"""

from __future__ import annotations

from ..dtypes import DType
from .registry import Codec, get

TINY_BYTES = 1024


def choose(dtype: DType, nbytes: int) -> Codec:
    if nbytes < TINY_BYTES:
        return get("raw")
    if dtype.kind == "f" and dtype.itemsize <= 2:
        return get("ans")
    if dtype.kind in "fc":
        return get("planes")
    return get("zstd")


def resolve(codec, dtype: DType, nbytes: int) -> Codec:
    """`codec` may be "auto", a name, a config dict or a Codec instance."""
    if codec is None or codec == "auto":
        return choose(dtype, nbytes)
    return get(codec)
