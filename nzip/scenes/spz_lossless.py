"""Lossless coding of scenes that lie on .spz's grids (a scene read from .spz, or one that
spz's quantisation would leave as it is): the integers spz stores, context coded.

spz gzips (or zstds) its arrays: byte statistics, one byte at a time. The numbers have
more structure than that, which context modelling takes. Format 7 codes every value bit
by bit with the context-mixing coder (nzip.codecs.entropy.mixing), each bit's odds mixed
from several models: positions as differences from the Gaussian before (or, sorted, as
Morton-code gaps); green given red and blue given both; each scale given the ones before;
a quaternion's z given how much of the unit length x and y took; each SH coefficient given
the other channels, the energy of the coefficients before it, the one before it and the
Gaussian's base colour; and colour and SH also given the same value of the two nearest
Gaussians before it (`neighbours`: spatial neighbours whose values the decoder already
has). Format 6 files (one adaptive frequency table per context) still decode. Measured on
pod_sh3_v2.spz (101,407 Gaussians, SH3) and biker.spz: see README's scenes section.

    found = on_grid(scene)                      # (arrays, version, fractional bits) or None
    blob, meta = encode(arrays, n, degree, version, any_order)
    arrays = decode(blob, n, degree, meta)      # spz.dequantize(arrays, ...) is the scene

The scene comes back bit for bit (encode_scene checks that the grid reproduces every float
before it takes this path). With any_order the Gaussians are first sorted along a Morton
curve and the positions stored as the gaps between their codes, which saves about half of
the position bytes: the same Gaussians, bit for bit, in another order. Renders then differ
only where Gaussians tie exactly in depth, since ties composite in the file's order (in
3DGS's and gsplat's rasterisers as in nzip's), which on a grid happens in views along its
axes and diagonals: pod, 90.2 dB on the bench's orbit (8 such views of 24), 100 dB in every
view of the orbit turned half a step. Otherwise the file's order is kept.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

from ..codecs.entropy import adaptive, mixing
from ..codecs.entropy.mixing import Model
from ..errors import CorruptDataError
from ..parallel import cores, pmap
from .quantize import morton, unmorton, unzigzag, zigzag
from .scene import SH_COEFFS, Scene
from .spz import dequantize, quantize

FIELDS = ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations")
MORTON_BITS = 21
NEIGHBOUR_WINDOW = 64  # Gaussians before each searched for its nearest (in stream order)


def on_grid(scene: Scene) -> tuple[list[np.ndarray], int, int] | None:
    """spz's arrays, rotation layout (2: x, y, z bytes; 3: smallest three) and fractional
    bits that decode to exactly `scene`'s floats; None when there are none."""
    if scene.normals is not None or scene.extra or len(scene) == 0:
        return None
    frac = fractional_bits(scene.positions)
    if frac is None:
        return None
    n = len(scene)
    for version in (3, 2):
        arrays = quantize(scene, version, frac)
        back = dequantize(arrays, n, scene.sh_degree, frac, version, scene.antialiased)
        if any(_wrong_rows(getattr(back, f), getattr(scene, f)).any() for f in FIELDS if f != "rotations"):
            return None
        wrong = _wrong_rows(back.rotations, scene.rotations)
        if wrong.mean() > 0.01:  # not this layout
            continue
        for i in range(4 if version == 3 else 0):
            # a stored component that rounded up past the one left out: the file left out
            # another than the largest; try each for those rows
            if not wrong.any():
                break
            rows = np.flatnonzero(wrong)
            sub = scene.subset(rows)
            alt = quantize(sub, 3, frac, largest=np.full(len(rows), i))
            ok = ~_wrong_rows(dequantize(alt, len(rows), sub.sh_degree, frac, 3).rotations, sub.rotations)
            arrays[4].reshape(n, 4)[rows[ok]] = alt[4].reshape(-1, 4)[ok]
            wrong[rows[ok]] = False
        if not wrong.any():
            return arrays, version, frac
    return None


def _wrong_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Gaussians whose float bits differ between two arrays of one field (rows first)."""
    if a.shape != b.shape:
        return np.ones(len(b), bool)
    bits = (np.ascontiguousarray(a, np.float32).view(np.uint32) != np.ascontiguousarray(b, np.float32).view(np.uint32))
    return bits.reshape(len(b), -1).any(axis=1)


def fractional_bits(positions: np.ndarray) -> int | None:
    """The fewest fractional bits (<= 23) that write every coordinate as a 24-bit integer."""
    p = positions.astype(np.float64)

    def whole(frac: int) -> bool:
        v = p * (1 << frac)
        return bool(np.all(v == np.rint(v)))

    if not whole(23):  # most float scenes: one pass, not 24
        return None
    low, high = -1, 23  # whole(high) holds, and it holds for every frac above the fewest
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if whole(mid) else (mid, high)
    return high if np.abs(p * (1 << high)).max(initial=0) < (1 << 23) else None


# -- the arrays as integers per Gaussian --------------------------------------------------

def _fields(arrays: list[np.ndarray], n: int, degree: int, version: int) -> dict:
    b = arrays[0].reshape(n, 3, 3).astype(np.int64)
    pos = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    out = {"positions": np.where(pos & 0x800000, pos - (1 << 24), pos),
           "alpha": arrays[1].astype(np.int64), "color": arrays[2].reshape(n, 3).astype(np.int64),
           "scale": arrays[3].reshape(n, 3).astype(np.int64)}
    if version == 2:
        out["rotation"] = arrays[4].reshape(n, 3).astype(np.int64)
    else:
        word = arrays[4].view("<u4").astype(np.int64)
        # largest index, then the three stored components, first packed first
        out["rotation"] = np.stack([word >> 30, (word >> 20) & 1023, (word >> 10) & 1023, word & 1023], axis=1)
    out["sh"] = arrays[5].reshape(n, SH_COEFFS[degree], 3).astype(np.int64) if degree else np.zeros((n, 0, 3), np.int64)
    return out


def _arrays(f: dict, degree: int, version: int) -> list[np.ndarray]:
    pos = f["positions"] & 0xFFFFFF
    arrays = [np.stack([pos & 255, (pos >> 8) & 255, pos >> 16], axis=2).astype(np.uint8).reshape(-1),
              f["alpha"].astype(np.uint8), f["color"].astype(np.uint8).reshape(-1), f["scale"].astype(np.uint8).reshape(-1)]
    r = f["rotation"]
    if version == 2:
        arrays.append(r.astype(np.uint8).reshape(-1))
    else:
        word = (r[:, 0] << 30) | (r[:, 1] << 20) | (r[:, 2] << 10) | r[:, 3]
        arrays.append(word.astype("<u4").view(np.uint8))
    if degree:
        arrays.append(f["sh"].astype(np.uint8).reshape(-1))
    return arrays


def _rows(f: dict, order: np.ndarray) -> dict:
    return {k: v[order] for k, v in f.items()}


# -- streams ----------------------------------------------------------------------------------
# Each stream is decoded before the next, so a stream's contexts may use any earlier one.

class _Streams:
    """Streams written (or read back) in one fixed order, by the context-mixing coder
    (format 7) or, for files of format 6, the adaptive frequency-table coder."""

    def __init__(self, blobs: list[bytes] | None = None, coder: str = "mixing"):
        self.blobs = [] if blobs is None else blobs
        self.at = 0
        self.coder = coder

    def code(self, values: np.ndarray | None, contexts: np.ndarray | None, n: int) -> np.ndarray:
        """Write `values` (encoding) or read n of them (decoding), under `contexts`."""
        if self.coder == "mixing":
            return self.mix(values, [Model(contexts)] if contexts is None else [Model(contexts), Model()], n)
        if values is not None:
            self.blobs.append(adaptive.encode(values, contexts))
            return np.asarray(values, np.int64).reshape(-1)
        return adaptive.decode(self._next(), np.zeros(n, np.int64) if contexts is None else contexts)

    def mix(self, values: np.ndarray | None, models: list[Model], n: int) -> np.ndarray:
        """As code(), the probabilities mixed from several models (mixing coder only)."""
        if values is not None:  # coded in pack(), side by side with the other streams
            self.blobs.append(functools.partial(mixing.encode, values, models))
            return np.asarray(values, np.int64).reshape(-1)
        return mixing.decode(self._next(), models)

    def _next(self) -> bytes:
        if self.at >= len(self.blobs):
            raise CorruptDataError("spz streams: fewer streams than the scene needs")
        self.at += 1
        return self.blobs[self.at - 1]

    def pack(self) -> bytes:
        # every value is known when encoding, so the streams are coded on all the cores (the
        # coder lets go of the GIL): pod 5.1 -> 3.0 s
        self.blobs = pmap(lambda b: b() if callable(b) else b, self.blobs, cores())
        return struct.pack(f"<I{len(self.blobs)}I", len(self.blobs), *map(len, self.blobs)) + b"".join(self.blobs)

    @classmethod
    def unpack(cls, blob: bytes, coder: str) -> "_Streams":
        if len(blob) < 4:
            raise CorruptDataError("spz streams: truncated")
        (count,) = struct.unpack_from("<I", blob)
        if count > 4096 or len(blob) < 4 + 4 * count:
            raise CorruptDataError("spz streams: the table of streams is corrupt")
        sizes = struct.unpack_from(f"<{count}I", blob, 4)
        at, blobs = 4 + 4 * count, []
        for size in sizes:
            if at + size > len(blob):
                raise CorruptDataError("spz streams: truncated")
            blobs.append(blob[at : at + size])
            at += size
        return cls(blobs, coder)


def _bit_length(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape, np.int64)
    x = x.astype(np.uint64)
    for shift in (32, 16, 8, 4, 2, 1):
        big = x >= (np.uint64(1) << np.uint64(shift))
        out += np.where(big, shift, 0)
        x = np.where(big, x >> np.uint64(shift), x)
    return out + (x > 0)


def _unsigned(s: _Streams, x: np.ndarray | None, ctx: np.ndarray, n: int, models: list[Model] = ()) -> np.ndarray:
    """Non-negative integers (< 2^64) as a bit length under `ctx` (and `models`, mixing),
    then the bits below the leading one: the top 8 under the length, the rest a byte at a time."""
    xl = None if x is None else _bit_length(x)
    length = s.mix(xl, [Model(ctx), *models], n) if models else s.code(xl, ctx, n)
    if length.size and (length.min() < 0 or length.max() > 64):
        raise CorruptDataError("spz streams: an integer longer than 64 bits")
    below = np.maximum(length - 1, 0)
    top = np.minimum(below, 8)
    value = np.where(length > 0, np.uint64(1), np.uint64(0)).astype(np.uint64)
    sel = top > 0
    part = s.code(None if x is None else (x[sel].astype(np.uint64) >> (below[sel] - top[sel]).astype(np.uint64))
                  .astype(np.int64) & ((1 << top[sel]) - 1), length[sel], int(sel.sum()))
    value[sel] = (value[sel] << top[sel].astype(np.uint64)) | part.astype(np.uint64)
    rest = below - top
    for j in range(0, int(rest.max(initial=0)), 8):  # whole bytes, from the most significant
        sel = rest > j
        width = np.minimum(rest[sel] - j, 8)
        shift = (rest[sel] - j - width).astype(np.uint64)
        mask = (np.uint64(1) << width.astype(np.uint64)) - np.uint64(1)
        part = s.code(None if x is None else ((x[sel].astype(np.uint64) >> shift) & mask).astype(np.int64), width, int(sel.sum()))
        value[sel] = (value[sel] << width.astype(np.uint64)) | part.astype(np.uint64)
    return value


def _bucket(v: np.ndarray, width: int, top: int) -> np.ndarray:
    return np.minimum(v // width, top)


def _positions(s: _Streams, f: dict | None, n: int, sorted_positions: bool, length_models: list[Model] = ()):
    """Sorted: the Morton codes of the offset grid, ascending, as gaps; otherwise differences
    from the Gaussian before, axis by axis (the axis before's length as context)."""
    enc = f is not None
    if sorted_positions:
        lo = s.code(f["positions"].min(axis=0) if enc else None, None, 3)
        gaps = None
        if enc:
            gaps = np.diff(morton((f["positions"] - lo).astype(np.uint64)), prepend=np.uint64(0))
        code = np.cumsum(_unsigned(s, gaps, np.zeros(n, np.int64), n, length_models), dtype=np.uint64)
        return unmorton(code).astype(np.int64) + lo
    cols, prev_len = [], np.zeros(n, np.int64)
    for a in range(3):
        d = zigzag(np.diff(f["positions"][:, a], prepend=0)) if enc else None
        u = _unsigned(s, d, prev_len, n, length_models)
        prev_len = np.minimum(_bit_length(u), 24)
        cols.append(np.cumsum(unzigzag(u)))
    return np.stack(cols, axis=1)


def _smallest_three(s: _Streams, rot: np.ndarray | None, n: int, buckets: int) -> np.ndarray:
    """v3 rotations: the index of the largest, then three (sign, 9-bit magnitude) words, the
    last given how much of the unit length the first two took (in `buckets`)."""
    enc = rot is not None
    big = s.code(rot[:, 0] if enc else None, None, n)
    w1 = s.code(rot[:, 1] if enc else None, big, n)
    w2 = s.code(rot[:, 2] if enc else None, big * 64 + (w1 & 511) // 8, n)
    taken = ((w1 & 511) ** 2 + (w2 & 511) ** 2) / 511 ** 2
    w3 = s.code(rot[:, 3] if enc else None, big * 64 + np.minimum(taken * buckets, buckets).astype(np.int64), n)
    return np.stack([big, w1, w2, w3], axis=1)


def _code_adaptive(s: _Streams, f: dict | None, n: int, degree: int, version: int, sorted_positions: bool) -> dict:
    """Format 6: every field through `s` (one frequency table per context), in the order the
    decoder needs: encoding when f is given."""
    enc = f is not None
    out = {"positions": _positions(s, f, n, sorted_positions)}
    out["alpha"] = s.code(f["alpha"] if enc else None, None, n)
    # colour: red; green - red given red; blue - green given green - red
    c = f["color"] if enc else None
    r = s.code(c[:, 0] if enc else None, None, n)
    g_r = s.code(c[:, 1] - c[:, 0] if enc else None, _bucket(r, 8, 31), n)
    b_g = s.code(c[:, 2] - c[:, 1] if enc else None, _bucket(g_r + 256, 4, 127), n)
    out["color"] = np.stack([r, r + g_r, r + g_r + b_g], axis=1)
    sc = f["scale"] if enc else None
    s0 = s.code(sc[:, 0] if enc else None, None, n)
    s1 = s.code(sc[:, 1] if enc else None, s0, n)
    s2 = s.code(sc[:, 2] if enc else None, (s0 // 4) * 64 + s1 // 4, n)
    out["scale"] = np.stack([s0, s1, s2], axis=1)
    rot = f["rotation"] if enc else None
    if version == 2:  # bytes of x, y, z of the quaternion with w >= 0
        x = s.code(rot[:, 0] if enc else None, None, n)
        y = s.code(rot[:, 1] if enc else None, x // 4, n)
        taken = ((x - 127.5) ** 2 + (y - 127.5) ** 2) / 127.5 ** 2
        z = s.code(rot[:, 2] if enc else None, np.minimum(taken * 16, 16).astype(np.int64), n)
        out["rotation"] = np.stack([x, y, z], axis=1)
    else:
        out["rotation"] = _smallest_three(s, rot, n, 32)
    # SH: per coefficient, red given the energy so far; green given red; blue given both
    def coefficient(i, v, e, energy, sh):
        red = s.code(v[:, 0] if enc else None, e, n)
        green = s.code(v[:, 1] if enc else None, red * 8 + e, n)
        blue = s.code(v[:, 2] if enc else None, (red * 256 + green) * 8 + e, n)
        return red, green, blue

    out["sh"] = _sh(f, n, degree, coefficient)
    return out


def neighbours(positions: np.ndarray, window: int = NEIGHBOUR_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """For each Gaussian, the two nearest among the `window` before it (in the order given):
    their indices (-1: none), nearest first, ties to the nearer in the order. Both sides
    compute them from the positions; in slices, so that memory stays at a few MB."""
    n = len(positions)
    p = positions.astype(np.int64)
    far = np.iinfo(np.int64).max
    out = np.full((2, n), -1, np.int64)
    step = 1 << 16
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        idx = np.arange(lo, hi)
        dist = np.full((window, hi - lo), far, np.int64)
        for w in range(1, window + 1):
            start = max(lo, w)
            if start >= hi:
                break
            d = p[start:hi] - p[start - w : hi - w]
            dist[w - 1, start - lo :] = np.einsum("ij,ij->i", d, d)
        for k in range(2):
            back = np.argmin(dist, axis=0)  # the first minimum: the nearer in the order
            found = dist[back, np.arange(hi - lo)] != far
            out[k, lo:hi] = np.where(found, idx - back - 1, -1)
            dist[back, np.arange(hi - lo)] = far
    return out[0], out[1]


def _code(s: _Streams, f: dict | None, n: int, degree: int, version: int, sorted_positions: bool) -> dict:
    """Format 7: every field through `s`, in the order the decoder needs (encoding when f is
    given), each value's bits mixed from several contexts: the value's own earlier fields,
    and the same field of the two nearest Gaussians before it (`neighbours`)."""
    enc = f is not None
    # a length also given the one before it in the stream
    out = {"positions": _positions(s, f, n, sorted_positions, [Model(None, np.arange(n) - 1, 0)])}
    near, second = neighbours(out["positions"])
    out["alpha"] = s.code(f["alpha"] if enc else None, None, n)  # alpha: neighbours say nothing of it
    # colour: red; green - red given red; blue - green given green - red; each also given the neighbours'
    c = f["color"] if enc else None
    r = s.mix(c[:, 0] if enc else None, [Model(), Model(None, near, 1), Model(None, second, 2)], n)
    g_r = s.mix(c[:, 1] - c[:, 0] if enc else None, [Model(r >> 2), Model(r >> 4, near, 1), Model(None, second, 1)], n)
    d = g_r + 256
    b_g = s.mix(c[:, 2] - c[:, 1] if enc else None,
                [Model(d), Model(d >> 2), Model((d >> 3) * 64 + (r >> 2)), Model(None, near, 1), Model(None, second, 1)], n)
    out["color"] = np.stack([r, r + g_r, r + g_r + b_g], axis=1)
    # scales: each given the ones before (neighbours say nothing of them)
    sc = f["scale"] if enc else None
    s0 = s.code(sc[:, 0] if enc else None, None, n)
    s1 = s.code(sc[:, 1] if enc else None, s0, n)
    s2 = s.mix(sc[:, 2] if enc else None, [Model((s0 >> 2) * 64 + (s1 >> 2)), Model(s0 + s1), Model()], n)
    out["scale"] = np.stack([s0, s1, s2], axis=1)
    rot = f["rotation"] if enc else None
    if version == 2:  # bytes of x, y, z of the quaternion with w >= 0: z given what x and y left of 1
        x = s.code(rot[:, 0] if enc else None, None, n)
        y = s.mix(rot[:, 1] if enc else None, [Model(x >> 2), Model(x >> 4), Model()], n)
        left = np.sqrt(np.maximum(0.0, 1 - ((x - 127.5) ** 2 + (y - 127.5) ** 2) / 127.5 ** 2))
        z = s.mix(rot[:, 2] if enc else None,
                  [Model((left * 64).astype(np.int64)), Model((left * 16).astype(np.int64)), Model()], n)
        out["rotation"] = np.stack([x, y, z], axis=1)
    else:
        out["rotation"] = _smallest_three(s, rot, n, 64)
    # SH: per coefficient, red given the energy so far and the coefficient before; green given
    # red; blue given both; each also given the nearest Gaussians' same coefficient and channel
    base = out["color"] >> 2

    def coefficient(i, v, e, energy, sh):
        before_red = sh[:, i - 1, 0] if i else np.full(n, 128)
        red = s.mix(v[:, 0] if enc else None, [Model(e), Model(e, near, 0), Model(e, second, 0), Model(before_red * 8 + e),
                                               Model(base[:, 0]), Model(np.minimum(energy // max(i, 1), 31))], n)
        green = s.mix(v[:, 1] if enc else None, [Model(red * 8 + e), Model(red, near, 0), Model(red, second, 0),
                                                 Model(red * 64 + base[:, 1])], n)
        blue = s.mix(v[:, 2] if enc else None, [Model((red * 256 + green) * 8 + e), Model(green * 256 + red, near, 0),
                                                Model((red * 256 + green) * 64 + base[:, 2])], n)
        return red, green, blue

    out["sh"] = _sh(f, n, degree, coefficient)
    return out


def _sh(f: dict | None, n: int, degree: int, coefficient) -> np.ndarray:
    """The SH coefficients in order, each coded (or read) by coefficient(i, its values or
    None, the energy bucket e, the energy so far, the coefficients so far) -> red, green, blue."""
    k = SH_COEFFS[degree]
    sh = np.zeros((n, k, 3), np.int64)
    energy = np.zeros(n, np.int64)
    for i in range(k):
        e = np.minimum(energy // max(i, 1) // 2, 7) if i else np.zeros(n, np.int64)
        sh[:, i] = np.stack(coefficient(i, None if f is None else f["sh"][:, i], e, energy, sh), axis=1)
        energy += np.abs(sh[:, i] - 128).sum(axis=1)
    return sh


def encode(arrays: list[np.ndarray], n: int, degree: int, version: int, any_order: bool = False) -> tuple[bytes, dict]:
    """(the coded arrays, meta for decode); with any_order the Gaussians are sorted first."""
    f = _fields(arrays, n, degree, version)
    span = f["positions"].max(axis=0) - f["positions"].min(axis=0)
    sorted_positions = bool(any_order and span.max() < (1 << MORTON_BITS))
    if any_order:
        shift = 0 if sorted_positions else int(span.max()).bit_length() - MORTON_BITS
        cells = ((f["positions"] - f["positions"].min(axis=0)) >> shift).astype(np.uint64)
        f = _rows(f, np.argsort(morton(cells), kind="stable"))
    s = _Streams()
    _code(s, f, n, degree, version, sorted_positions)
    return s.pack(), {"version": version, "sorted_positions": sorted_positions, "coder": "mixing"}


def decode(blob: bytes, n: int, degree: int, meta: dict) -> list[np.ndarray]:
    version = int(meta["version"])
    coder = meta.get("coder", "adaptive")  # format 6 files: adaptive
    if coder not in ("adaptive", "mixing"):
        raise CorruptDataError(f"spz streams: unknown coder {coder!r}")
    code = _code if coder == "mixing" else _code_adaptive
    f = code(_Streams.unpack(blob, coder), None, n, degree, version, bool(meta["sorted_positions"]))
    bounds = {"positions": (-(1 << 23), (1 << 23) - 1), "alpha": (0, 255), "color": (0, 255), "scale": (0, 255),
              "sh": (0, 255), "rotation": (0, 255 if version == 2 else 1023)}
    for name, (low, high) in bounds.items():
        if f[name].size and (f[name].min() < low or f[name].max() > high):
            raise CorruptDataError(f"spz streams: {name} out of range")
    if version != 2 and f["rotation"].size and f["rotation"][:, 0].max() > 3:
        raise CorruptDataError("spz streams: rotation index out of range")
    return _arrays(f, degree, version)
