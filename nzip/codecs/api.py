"""codecs.encode / codecs.decode: a codec's payload wrapped in a frame."""

from __future__ import annotations

import math

import numpy as np

from ..dtypes import DType, dtype_from_name, from_bytes, to_bytes
from ..errors import CorruptDataError, FormatError, NzipError
from ..formats import frame as frame_format
from ..formats.checksum import xxh3
from .registry import Codec, get, resolve_threads

# Refuse headers that describe more than this many bytes before allocating anything.
MAX_DECODED_BYTES = 1 << 42


def encode_with(codec: Codec, obj, threads: int = 0) -> bytes:
    raw, dtype, shape, kind = to_bytes(obj)
    codec.check_dtype(dtype)
    payload = codec.encode_payload(raw, dtype, resolve_threads(threads))
    header = {
        "codec": codec.get_config(),
        "dtype": dtype.name,
        "shape": list(shape),
        "kind": kind,
        "raw_xxh3": f"{xxh3(raw):016x}",
    }
    return frame_format.pack(header, payload)


def encode(obj, codec: str | dict | Codec = "zstd", threads: int = 0, **params) -> bytes:
    """Encode a numpy array or torch tensor with the named codec; returns a frame (bytes).

    threads=0 uses every core, threads=1 stays single-threaded. Extra keyword arguments
    are the codec's parameters, e.g. encode(t, "zstd", level=19).
    """
    return encode_with(get(codec, **params), obj, threads=threads)


def check_shape(dtype_name, shape) -> tuple[DType, tuple[int, ...], int]:
    """Validate a (dtype, shape) pair read from a header; returns (dtype, shape, count)."""
    try:
        dtype = dtype_from_name(dtype_name)
    except NzipError as exc:
        raise FormatError(f"header names {exc}") from None
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d for d in shape) or len(shape) > 64:
        raise FormatError(f"header has an invalid shape {shape!r}")
    count = math.prod(shape)
    if count * dtype.itemsize > MAX_DECODED_BYTES:
        raise FormatError(f"header shape {shape} describes {count * dtype.itemsize} bytes: refusing")
    return dtype, tuple(shape), count


def decode_raw(codec: Codec, payload, dtype: DType, count: int, threads: int, raw_hash: str | None) -> np.ndarray:
    """Run a codec's decoder; with raw_hash, also check that it produced exactly the bytes
    that were encoded (verification does; plain decoding relies on the payload checksum,
    which has already been checked, and saves a pass over the output)."""
    codec.check_dtype(dtype)
    if count * dtype.itemsize > len(payload) * codec.max_expansion + (1 << 20):
        raise CorruptDataError(f"{codec.codec_id}: a payload of {len(payload)} bytes cannot hold "
                               f"{count * dtype.itemsize} bytes: the header is corrupt")
    raw = codec.decode_payload(memoryview(payload).cast("B"), dtype, count, resolve_threads(threads))
    if raw.dtype != np.uint8 or raw.size != count * dtype.itemsize:
        raise CorruptDataError(f"{codec.codec_id}: decoded {raw.size} bytes, expected {count * dtype.itemsize}")
    if raw_hash is not None and f"{xxh3(raw):016x}" != raw_hash:
        raise CorruptDataError(f"{codec.codec_id}: decoded bytes do not match the checksum of the original")
    return raw


def decode(frame, device=None, threads: int = 0, verify: bool = False):
    """Decode a frame from `encode`: returns the same kind (numpy/torch), dtype, shape and
    bits. device (torch only) moves the result, e.g. device="cuda". The frame's checksum
    is always checked; verify=True also checks the decoded bytes against the checksum of
    the original taken at encode time."""
    header, payload = frame_format.unpack(frame)
    dtype, shape, count = check_shape(header.get("dtype"), header.get("shape"))
    kind = header.get("kind")
    if kind not in ("torch", "numpy"):
        raise FormatError(f"frame header has an unknown kind {kind!r}")
    config = header.get("codec")
    if not isinstance(config, dict):
        raise FormatError("frame header has no codec config")
    codec = get(config)
    raw = decode_raw(codec, payload, dtype, count, threads, header.get("raw_xxh3") if verify else None)
    return from_bytes(raw, dtype, shape, kind, device=device)
