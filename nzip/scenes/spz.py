"""Niantic's .spz, versions 2 and 3 (one gzip stream) and 4 (zstd streams with a table).

Layout, all little-endian. Versions 2-3: gzip of a 16-byte header and the arrays:

    u32 magic 0x5053474e ("NGSP"), u32 version, u32 N, u8 SH degree, u8 fractional bits,
    u8 flags (1: antialiased), u8 reserved
    positions  N x 3 x 24-bit signed fixed point (x * 2^fractional bits)
    alphas     N x u8 = sigmoid(opacity) * 255
    colours    N x 3 x u8 = sh_dc * 0.15 * 255 + 127.5
    scales     N x 3 x u8 = (log scale + 10) * 16
    rotations  v2: N x 3 x u8 (x, y, z of the unit quaternion with w >= 0, * 127.5 + 127.5)
               v3: N x u32: index of the largest |component| (2 bits) and the other three as
               sign + 9-bit magnitude / sqrt(1/2), components ordered x, y, z, w
    SH         N x K x 3 x u8 = coefficient * 128 + 128 (degree-1 coefficients rounded to
               5 bits, higher ones to 4, as the reference encoder does), colour fastest

Version 4: the same header grown to 32 bytes (byte 15 the number of streams, u32 at 16 the
offset of the table, the rest zero), a table of (u64 compressed, u64 raw) sizes, one per
array above in that order, then each array as its own zstd frame (rotations as in v3).

.spz stores right-up-back coordinates, the INRIA .ply right-down-forward: reading and
writing flip y and z (positions, quaternions, and the SH coefficients odd in y or z), as the
reference library does when told the .ply convention.
"""

from __future__ import annotations

import gzip
import io
import os
import struct

import numpy as np

from ..errors import FormatError, TruncatedError, VersionError
from ..formats.atomic import atomic_write
from .scene import SH_COEFFS, Scene

MAGIC = 0x5053474E
COLOR_SCALE = 0.15
SQRT1_2 = np.float32(np.sqrt(0.5))
MAX_POINTS = 1 << 28
# sign of each SH coefficient (per colour) under the y, z flip; degrees 1, 2, 3 in 3DGS order
SH_FLIP = np.array([-1, -1, 1] + [-1, 1, 1, -1, 1] + [-1, 1, -1, -1, 1, -1, 1], np.float32)


def _flip(scene_arrays: dict) -> dict:
    """Right-down-forward <-> right-up-back (its own inverse)."""
    out = dict(scene_arrays)
    out["positions"] = scene_arrays["positions"] * np.float32([1, -1, -1])
    out["rotations"] = scene_arrays["rotations"] * np.float32([1, 1, -1, -1])  # w, x, y, z
    k = scene_arrays["sh_rest"].shape[1]
    out["sh_rest"] = scene_arrays["sh_rest"] * SH_FLIP[:k, None]
    return out


# -- decoding -------------------------------------------------------------------------------

def _positions(raw: np.ndarray, n: int, frac: int) -> np.ndarray:
    b = raw.reshape(n * 3, 3).astype(np.int32)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    v = np.where(v & 0x800000, v - (1 << 24), v)
    return (v.astype(np.float32) / np.float32(1 << frac)).reshape(n, 3)


def _rotations_v2(raw: np.ndarray, n: int) -> np.ndarray:
    xyz = raw.reshape(n, 3).astype(np.float32) / np.float32(127.5) - 1
    w = np.sqrt(np.maximum(0, 1 - (xyz * xyz).sum(axis=1)))
    return np.concatenate([w[:, None], xyz], axis=1)


def _rotations_v3(raw: np.ndarray, n: int) -> np.ndarray:
    comp = raw.reshape(n, 4).astype(np.uint32)
    comp = comp[:, 0] | (comp[:, 1] << 8) | (comp[:, 2] << 16) | (comp[:, 3] << 24)
    largest = (comp >> 30).astype(np.int64)
    q = np.zeros((n, 4), np.float32)  # x, y, z, w
    for i in range(3, -1, -1):  # the last component packed sits in the low bits
        here = largest != i
        mag = (comp & 511).astype(np.float32) * (SQRT1_2 / np.float32(511))
        val = np.where((comp >> 9) & 1, -mag, mag)
        q[here, i] = val[here]
        comp = np.where(here, comp >> 10, comp)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0, 1 - (q * q).sum(axis=1)))
    return q[:, [3, 0, 1, 2]]


def _unpack(arrays: list[np.ndarray], n: int, degree: int, frac: int, version: int, flags: int) -> Scene:
    pos, alpha, color, scale, rot = arrays[:5]
    k = SH_COEFFS[degree]
    # 0 and 255 would be -inf and inf; these bounds still encode back to 0 and 255
    a = np.clip(alpha.astype(np.float32) / 255, 0.25 / 255, 254.75 / 255)
    sh = arrays[5] if k else np.zeros(0, np.uint8)
    fields = {
        "positions": _positions(pos, n, frac),
        "opacity": np.log(a / (1 - a)).astype(np.float32),
        "sh_dc": ((color.reshape(n, 3).astype(np.float32) / 255 - 0.5) / np.float32(COLOR_SCALE)),
        "scales": scale.reshape(n, 3).astype(np.float32) / 16 - 10,
        "rotations": _rotations_v2(rot, n) if version == 2 else _rotations_v3(rot, n),
        "sh_rest": ((sh.astype(np.float32) - 128) / 128).reshape(n, k, 3),
    }
    fields = _flip(fields)
    return Scene(positions=fields["positions"], sh_dc=fields["sh_dc"], sh_rest=fields["sh_rest"],
                 opacity=fields["opacity"], scales=fields["scales"], rotations=fields["rotations"],
                 antialiased=bool(flags & 1))


def _sizes(n: int, degree: int, version: int) -> list[int]:
    return [9 * n, n, 3 * n, 3 * n, (3 if version == 2 else 4) * n] + ([3 * SH_COEFFS[degree] * n] if degree else [])


def _check_header(version: int, n: int, degree: int, frac: int) -> None:
    if version not in (2, 3, 4):
        raise VersionError(f".spz version {version}: nzip reads 2, 3 and 4")
    if degree not in SH_COEFFS:
        raise FormatError(f".spz SH degree {degree}: 0 to 3 are read")
    if not 0 < n <= MAX_POINTS:
        raise FormatError(f".spz holds {n} Gaussians" + (": none" if n == 0 else ": more than nzip accepts"))
    if frac > 23:
        raise FormatError(f".spz fractional bits {frac} out of range")


def read_spz(path: str | os.PathLike) -> Scene:
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == struct.pack("<I", MAGIC):
        return _read_v4(data)
    if data[:2] != b"\x1f\x8b":
        raise FormatError("not a .spz file (neither gzip nor an NGSP header)")
    try:
        body = gzip.decompress(data)
    except (OSError, EOFError, ValueError) as exc:
        raise TruncatedError(f".spz gzip stream is corrupt or truncated ({exc})") from None
    if len(body) < 16:
        raise TruncatedError(".spz shorter than its header")
    magic, version, n, degree, frac, flags, _ = struct.unpack_from("<IIIBBBB", body)
    if magic != MAGIC:
        raise FormatError(".spz has the wrong magic")
    _check_header(version, n, degree, frac)
    sizes = _sizes(n, degree, version)
    if len(body) < 16 + sum(sizes):
        raise TruncatedError(f".spz body is {len(body)} bytes, its header needs {16 + sum(sizes)}")
    arrays, at = [], 16
    for size in sizes:
        arrays.append(np.frombuffer(body, np.uint8, size, at))
        at += size
    return _unpack(arrays, n, degree, frac, version, flags)


def _read_v4(data: bytes) -> Scene:
    import zstandard

    if len(data) < 32:
        raise TruncatedError(".spz shorter than its header")
    magic, version, n, degree, frac, flags, nstreams, toc = struct.unpack_from("<IIIBBBBI", data)
    _check_header(version, n, degree, frac)
    sizes = _sizes(n, degree, version)
    if nstreams != len(sizes) or toc < 32 or toc + 16 * nstreams > len(data):
        raise FormatError(f".spz v4 lists {nstreams} streams at {toc}; SH degree {degree} needs {len(sizes)}")
    table = np.frombuffer(data, "<u8", 2 * nstreams, toc).reshape(nstreams, 2)
    at, arrays = toc + 16 * nstreams, []
    dctx = zstandard.ZstdDecompressor()
    for (packed, raw), size in zip(table.tolist(), sizes):
        if raw != size or at + packed > len(data):
            raise TruncatedError(".spz v4 stream table does not match the file (truncated or corrupt)")
        try:
            arrays.append(np.frombuffer(dctx.decompress(data[at : at + packed], max_output_size=raw), np.uint8))
        except zstandard.ZstdError as exc:
            raise FormatError(f".spz v4 stream is corrupt ({exc})") from None
        if arrays[-1].size != raw:
            raise FormatError(".spz v4 stream decodes to the wrong size")
        at += packed
    return _unpack(arrays, n, degree, frac, version, flags)


# -- encoding -------------------------------------------------------------------------------

def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _pack_rotations(q_wxyz: np.ndarray, version: int, largest: np.ndarray | None = None) -> np.ndarray:
    q = q_wxyz[:, [1, 2, 3, 0]].astype(np.float64)  # x, y, z, w
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    n = q.shape[0]
    if version == 2:
        q = np.where(q[:, 3:4] < 0, -q, q)
        return _u8(q[:, :3] * 127.5 + 127.5).reshape(-1)
    if largest is None:
        largest = np.abs(q).argmax(axis=1)
    q = np.where(q[np.arange(n), largest][:, None] < 0, -q, q)
    comp = largest.astype(np.uint32)
    for i in range(4):
        here = largest != i
        mag = np.minimum(np.rint(np.abs(q[:, i]) / np.sqrt(0.5) * 511), 511).astype(np.uint32)
        word = (np.signbit(q[:, i]).astype(np.uint32) << 9) | mag  # -0.0 too: it reads back as stored
        comp = np.where(here, (comp << 10) | word, comp)
    return comp.astype("<u4").view(np.uint8)


def _pack_sh(sh_rest: np.ndarray) -> np.ndarray:
    q = np.clip(np.rint(sh_rest.astype(np.float64) * 128 + 128), 0, 255)
    bits = np.where(np.arange(sh_rest.shape[1]) < 3, 5, 4)[None, :, None]
    bucket = 2.0 ** (8 - bits)
    q = np.minimum(np.floor((q + bucket / 2) / bucket) * bucket, 255)
    return q.astype(np.uint8).reshape(-1)


def quantize(scene: Scene, version: int = 3, fractional_bits: int = 12, largest: np.ndarray | None = None) -> list[np.ndarray]:
    """.spz's arrays for `scene` (positions, alphas, colours, scales, rotations[, SH]), flat uint8.

    largest: versions 3-4, the quaternion component (x, y, z, w: 0-3) each Gaussian leaves
    out; by default its largest, as the reference encoder picks."""
    f = _flip({"positions": scene.positions, "rotations": scene.rotations, "sh_rest": scene.sh_rest})
    fixed = np.clip(np.rint(f["positions"].astype(np.float64) * (1 << fractional_bits)), -(1 << 23), (1 << 23) - 1)
    fixed = fixed.astype(np.int32).reshape(-1)
    pos = np.stack([fixed & 255, (fixed >> 8) & 255, (fixed >> 16) & 255], axis=1).astype(np.uint8).reshape(-1)
    alpha = _u8(255 / (1 + np.exp(-scene.opacity.astype(np.float64))))
    color = _u8(scene.sh_dc.astype(np.float64) * (COLOR_SCALE * 255) + 127.5).reshape(-1)
    scale = _u8((scene.scales.astype(np.float64) + 10) * 16).reshape(-1)
    arrays = [pos, alpha, color, scale, _pack_rotations(f["rotations"], version, largest)]
    if scene.sh_degree:
        arrays.append(_pack_sh(f["sh_rest"]))
    return arrays


def dequantize(arrays: list[np.ndarray], n: int, degree: int, fractional_bits: int, version: int,
               antialiased: bool = False) -> Scene:
    """The scene that .spz's arrays decode to (what read_spz returns)."""
    return _unpack(arrays, n, degree, fractional_bits, version, int(antialiased))


def write_spz(scene: Scene, path: str | os.PathLike, version: int = 3, fractional_bits: int = 12,
              overwrite: bool = True) -> None:
    """Write `scene` as .spz (the reference encoder's quantisation; lossy by design)."""
    if version not in (2, 3, 4):
        raise VersionError(f".spz version {version}: nzip writes 2, 3 and 4")
    scene.check_finite()
    n, degree = len(scene), scene.sh_degree
    arrays = quantize(scene, version, fractional_bits)
    flags = 1 if scene.antialiased else 0
    with atomic_write(path, overwrite) as out:
        if version < 4:
            body = io.BytesIO()
            body.write(struct.pack("<IIIBBBB", MAGIC, version, n, degree, fractional_bits, flags, 0))
            for a in arrays:
                body.write(a.tobytes())
            out.write(gzip.compress(body.getvalue(), compresslevel=9, mtime=0))
            return
        import zstandard

        cctx = zstandard.ZstdCompressor(level=12)
        packed = [cctx.compress(a.tobytes()) for a in arrays]
        out.write(struct.pack("<IIIBBBBI", MAGIC, 4, n, degree, fractional_bits, flags, len(arrays), 32) + bytes(12))
        out.write(np.array([[len(p), a.size] for p, a in zip(packed, arrays)], "<u8").tobytes())
        for p in packed:
            out.write(p)
