"""zstd glue: compress with a level and threads, decompress only what the frame promises."""

from __future__ import annotations

import zstandard

from ...errors import CorruptDataError


def compress(data, level: int, threads: int = 1) -> bytes:
    # zstd's own workers only pay off on large inputs
    workers = threads if threads > 1 and len(data) >= (4 << 20) else 0
    return zstandard.ZstdCompressor(level=level, threads=workers, write_content_size=True).compress(data)


def decompress(payload, expected: int) -> bytes:
    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise CorruptDataError(f"zstd: not a zstd frame ({exc})") from None
    if size != expected:
        raise CorruptDataError(f"zstd: frame holds {size} bytes, expected {expected}")
    try:
        out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise CorruptDataError(f"zstd: corrupt stream ({exc})") from None
    if len(out) != expected:
        raise CorruptDataError("zstd: stream decoded to the wrong size")
    return out
