"""The .nzpc model file: a quantized HCLT, header first, no pickle.

    offset  size  field
    0       8     magic b"NZPC\\r\\n\\x1a\\n"
    8       2     format version, u16 LE (1)
    10      4     header length H, u32 LE
    14      H     header, UTF-8 JSON: data_shape, value_range, hidden, shared, bits, the
                  training settings, and per array its dtype, shape and (offset, length) of
                  its zstd-compressed bytes in the body
    14+H    ...   body: the arrays, each zstd-compressed (C order, little-endian)
    end-8   8     XXH3-64 of everything before it

The XXH3-64 is also the model's identity: a `pc` frame records it, so a frame is only
ever decoded with the model it was made with.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import xxhash

from ...errors import CorruptDataError, FormatError, VersionError
from .quantized import BITS, MAX_HIDDEN, QuantizedHCLT

MAGIC = b"NZPC\r\n\x1a\n"
VERSION = 1
MAX_VARS = 1 << 20  # far beyond any image a tree-shaped circuit codes in reasonable time
MAX_VALUES = 1 << 16
ARRAYS = {"parent": "<i4", "prior": "<u2", "transition": "<u2", "emission": "<u4", "leaf_mix": "<u2", "leaf_dists": "<u4"}


def dumps(model: QuantizedHCLT, level: int = 19) -> bytes:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=level)
    arrays, body = {}, bytearray()
    for name, dtype in ARRAYS.items():
        a = getattr(model, name)
        if a is None:
            continue
        blob = compressor.compress(np.ascontiguousarray(a, dtype=dtype).tobytes())
        arrays[name] = {"dtype": dtype, "shape": list(a.shape), "offset": len(body), "length": len(blob)}
        body += blob
    header = json.dumps({"kind": "hclt", "data_shape": list(model.data_shape), "value_range": list(model.value_range),
                         "hidden": model.hidden, "shared": model.shared, "bits": BITS, "training": model.training,
                         "arrays": arrays}, sort_keys=True).encode()
    out = MAGIC + struct.pack("<HI", VERSION, len(header)) + header + bytes(body)
    return out + xxhash.xxh3_64_digest(out)


def _fail(what: str):
    raise CorruptDataError(f"not a usable .nzpc model: {what}")


def loads(blob: bytes) -> QuantizedHCLT:
    """Parse and check a model file's bytes; every inconsistency is a clear error."""
    import zstandard

    blob = bytes(blob)
    if blob[:8] != MAGIC:
        raise FormatError("not an nzip circuit model (.nzpc): wrong magic")
    if len(blob) < 22:
        _fail("truncated")
    version, hlen = struct.unpack_from("<HI", blob, 8)
    if version != VERSION:
        raise VersionError(f".nzpc format version {version} is not supported (this nzip reads version {VERSION})")
    if xxhash.xxh3_64_digest(blob[:-8]) != blob[-8:]:
        _fail("checksum mismatch (truncated or corrupted file)")
    if 14 + hlen > len(blob) - 8:
        _fail("header runs past the end")
    try:
        header = json.loads(blob[14:14 + hlen])
        shape, (lo, hi) = tuple(int(s) for s in header["data_shape"]), header["value_range"]
        arrays, bits = header["arrays"], header["bits"]
    except (ValueError, KeyError, TypeError) as e:
        _fail(f"bad header ({e})")
    if bits != BITS:
        raise FormatError(f"model quantized with precisions {bits}; this nzip codes with {BITS}")
    d = int(np.prod(shape)) if shape else 0
    if not (1 <= d <= MAX_VARS and all(s >= 1 for s in shape)):
        _fail(f"data shape {shape}")
    if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= hi - lo + 1 <= MAX_VALUES):
        _fail(f"value range {lo}..{hi}")
    body = memoryview(blob)[14 + hlen:-8]
    out = {}
    for name, info in arrays.items():
        if name not in ARRAYS or info.get("dtype") != ARRAYS[name]:
            _fail(f"unknown array {name!r}")
        a_shape = tuple(int(s) for s in info["shape"])
        count = int(np.prod(a_shape))
        start, length = int(info["offset"]), int(info["length"])
        if count > 4 * MAX_VARS * MAX_HIDDEN * MAX_HIDDEN or not 0 <= start <= start + length <= len(body):
            _fail(f"array {name} lies outside the file or is absurdly large")
        size = count * np.dtype(ARRAYS[name]).itemsize
        try:
            raw = zstandard.ZstdDecompressor().decompress(body[start:start + length], max_output_size=size)
        except zstandard.ZstdError as e:
            _fail(f"array {name}: {e}")
        if len(raw) != size:
            _fail(f"array {name} holds {len(raw)} bytes, its shape needs {size}")
        out[name] = np.frombuffer(raw, ARRAYS[name]).reshape(a_shape).astype(np.dtype(ARRAYS[name]).newbyteorder("="))
    model = QuantizedHCLT(out.get("parent"), out.get("prior"), out.get("transition"), shape, (lo, hi),
                          emission=out.get("emission"), leaf_mix=out.get("leaf_mix"), leaf_dists=out.get("leaf_dists"),
                          training=header.get("training", {}), identity=blob[-8:])
    _check_structure(model, d)
    return model


def _check_structure(m: QuantizedHCLT, d: int) -> None:
    if m.parent is None or m.prior is None or m.transition is None:
        _fail("parent, prior or transition missing")
    k, v = len(m.prior), m.values
    if m.parent.shape != (d,) or not 1 <= k <= MAX_HIDDEN or m.transition.shape != (d, k, k):
        _fail("array shapes do not match the data shape and hidden size")
    if (m.emission is None) == (m.leaf_mix is None) or (m.leaf_mix is None) != (m.leaf_dists is None):
        _fail("needs either emission or leaf_mix with leaf_dists")
    if m.emission is not None and m.emission.shape != (d, k, v):
        _fail("emission shape")
    if m.leaf_mix is not None and (m.leaf_mix.shape[:2] != (d, k) or m.leaf_dists.shape != (m.leaf_mix.shape[2], v)):
        _fail("leaf_mix / leaf_dists shapes")
    if any((a == 0).any() for a in (m.prior, m.transition, m.emission, m.leaf_mix, m.leaf_dists) if a is not None):
        _fail("zero probabilities")
    # a tree: one root, parents in range, and every node reaches the root
    parent = m.parent.astype(np.int64)
    if (parent < -1).any() or (parent >= d).any() or (parent == -1).sum() != 1:
        _fail("parent array is not a rooted tree")
    jump = parent.copy()
    for _ in range(int(np.ceil(np.log2(d))) + 1):  # pointer doubling: all reach -1 iff acyclic
        jump = np.where(jump >= 0, jump[np.maximum(jump, 0)], -1)
    if (jump >= 0).any():
        _fail("parent array has a cycle")


def save(model: QuantizedHCLT, path: str | os.PathLike, overwrite: bool = True) -> bytes:
    """Write atomically; returns the model's identity."""
    from ...formats.atomic import atomic_write

    blob = dumps(model)
    with atomic_write(path, overwrite=overwrite) as f:
        f.write(blob)
    model.identity = blob[-8:]
    return model.identity


def load(path: str | os.PathLike) -> QuantizedHCLT:
    with open(path, "rb") as f:
        return loads(f.read())
