"""The scene codec: a Gaussian-splat scene in a .nzs file, at five levels (four lossy, one lossless).

    report = encode_scene(scene, "scene.nzs", level="medium")
    scene = decode_scene("scene.nzs")

Lossy levels (low, compact, medium, high), fitted post hoc, no training images (the
numbers below are low/medium/high's; compact takes medium's and the changes in LEVELS):
- positions (format 4): cells of a grid over the bounding box (11/14/17 bits per axis);
  the Gaussians sorted by the Morton code of their cell 3 bits coarser (every other
  attribute follows that order), the sorted codes stored as deltas; then up to 3
  refinement bits per axis, as many as the Gaussian's opacity earns: all from alpha 1/4,
  one fewer per halving below (a position error d costs a render about (alpha x d)^2,
  whatever the size). Measured on guitar, positions alone: 66.5 -> 70.5 dB at the same
  bytes as one 13-bit grid for all. Positions that already lie on a grid no finer than
  those coarse cells (an .spz's 1/4096 steps) are stored on it instead, every one exactly
  (_native_grid; pod at medium: positions 295 -> 144 KB, the file 14% smaller);
- opacity: sigmoid(opacity) on 7/8/8 bits (medium's eighth bit: biker +1.3 dB for +1.3% bytes,
  guitar +0.4 dB for +1.1%; a steeper trade than any other step's);
- importance tiers (format 2): each Gaussian gets a tier from log2(alpha x size) against
  the scene's median, 7 tiers (-3..+3), entropy coded as the difference from the tier its
  opacity alone predicts (format 4; ~0.2 bytes a Gaussian, a quarter less than the tiers).
  A tier up halves the scale and DC steps: a Gaussian's share of a render's squared
  error from an attribute error d is about
  (alpha x size x d)^2, so steps inversely proportional to alpha x size minimise the
  error at a given rate. Each tier's levels are coded as arrays of their own. Measured on
  guitar at medium: +2.8 dB for +2.3% bytes; on gsplat_alti: +3.4 dB at the same size;
- frames: each Gaussian's rotation and scales are first rewritten in the one of the 24
  frames that draw the same ellipsoid whose quaternion is nearest the identity
  (nzip.scenes.frames; the decoder needs nothing): at medium guitar's rotations take
  210.7 -> 180.9 KB, biker's 345.6 -> 315.5 KB, the renders as they were (+0.3 dB on guitar:
  a rotation near the identity turns less per level);
- shapes: each Gaussian's rotation and scale levels are then chosen together, among the
  64 corners of the grid cell around its numbers, for the ellipsoid nearest the original
  (nzip.scenes.rounding; the decoder needs nothing): at medium, the same bytes (+0.1%),
  guitar +0.3 dB, biker +0.3, the donut +0.3;
- log scales and SH DC: grids of base step (scale 1/8, 1/12, 1/48; DC 1/8, 1/16, 1/48)
  divided by 2^(tier - 3); rotations: the smallest three components of the unit quaternion
  on signed grids of 6/6/10 bits plus (rotation tier - 3), and the index of the largest.
  Rotation tiers (format 3) are tiers of alpha x elongation (largest minus smallest axis),
  since turning a round Gaussian changes nothing; stored as the difference from the
  importance tier (~0.2 bytes a Gaussian). Against the importance tier's rotation grid, at the same rotation bytes:
  guitar +3.1 dB, biker +1.1, gsplat_alti +0.7 (with 9% fewer rotation bytes). Measured
  on the SH3 scenes, per byte these beat vector quantisation, whose 2-3 stages of 256
  codewords lost 10-15 dB on scale, rotation and DC;
- the rest of the SH coefficients (9, 24 or 45 numbers): residual vector quantisation
  (k-means codebooks as in Compact 3D Gaussian Splatting, 64 / 256 / 1024+256 codewords),
  sized to the scene (at most Gaussians / (4 x dimension) codewords: a codebook costs at
  most half a byte per Gaussian), stored as float16; k-means weighs each Gaussian's error
  by its share of a render's, (alpha x size)^2 as for the tiers (medium, same bytes:
  gsplat_alti 48.4 -> 57.5 dB, pod 40.6 -> 42.0);
- pruning: Gaussians whose opacity is under 1/255 (never drawn: the renderer skips alpha
  under 1/255) in medium and low; in low also those under 2% opacity whose largest axis is
  under 0.1% of the scene's extent, and the whole lowest tier (alpha x size under 1/11 of
  the median: on gsplat_alti 17% fewer bytes for 0.9 dB, on the donut 9% for 1.6 dB);
  in compact the Gaussians that renders of the original from 24 views barely see
  (summed weight under `hidden` pixels: inside objects, behind opaque surfaces), ~5% of
  biker's, ~10% of guitar's (both 0.59x spz at better than its fidelity), but ~18% of the
  donut's, which the bench's views do see (-8.4 dB).
Optionally (geometry="codebooks"; `nzip pack --geometry codebooks [--geometry-stages N]`,
format 8), scale and rotation are stored as Compact 3D Gaussian Splatting stores them
instead: N (default 6) residual stages of 64 codewords over log scales and unit quaternions
(canonical frames, k-means weighted as for SH rest); rotation tiers and shape rounding
then do not apply (tools/bench_geometry_vq.py: about twice the grids' bytes for the same renders).
Optionally (refine=steps; `nzip pack --refine N`), the SH rest codebooks are then tuned by
gradient descent against renders of the original from cameras other than fidelity's
(nzip.scenes.refine): the same bytes, a closer render.
Every array (indices, deltas, codebooks) is then coded by whichever of nzip's lossless
codecs makes it smallest (ans, planes, zstd, raw). Format 5: each tier's scale, DC and
rotation levels are stored as rows (one table for the three columns) or as columns (a
table each, a column stored as its difference from an earlier one where that has the lower
entropy: colour channels move together), whichever is smaller; meta "columns" names the
arrays stored as columns and the predictors. At medium: guitar 981 -> 952 KB, biker
1,506 -> 1,441 KB (its DC 272 -> 204 KB), the decoded scene unchanged.
Tiers from renders (views; `nzip pack --views N`): each Gaussian's importance is moved up
to a tier by its weight in renders of the original (nzip.scenes.visibility, _seen_factor):
at medium, bytes within 1%, the donut +0.4 dB, guitar +2.3 dB, biker +2.2 dB.

lossless: every attribute's float32 bits, in the original order (normals and extra .ply
properties too), each coded by nzip's `auto` choice. A scene that lies on .spz's grids (read
from .spz, or one that spz's quantisation leaves as it is) is stored instead as the integers
spz stores, context coded (nzip.scenes.spz_lossless; format 7, meta "spz", by the
context-mixing coder; format 6 files, by adaptive frequency tables, still decode):
pod_sh3_v2.spz takes 0.69x its .spz where the float bits took 2.13x, and with any_order
(the Gaussians sorted along a Morton curve; renders then differ where Gaussians tie
exactly in depth) 0.60x. A lossy level of such a scene is stored this way (sorted) where
that file is the smaller: meta "level" names the level asked for, "spz" says how it is stored.

The file is an nzip container (.nz format, magic, checksums and all) whose metadata holds
{"nzip_scene": 8, "level", "count", "sh_degree", "tiers", "columns", "geometry", ...}: `nzip info` and
`nzip verify` read it. Formats 1 (before tiers: one grid per attribute, arrays without a
tier suffix), 2 (rotations on the importance tiers' grids), 3 (one position grid for all,
tiers stored as they are), 4 (level arrays as rows only), 5, 6 and 7 still decode.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from ..codecs import get as get_codec
from ..codecs.ans import _entropy_bytes
from ..dtypes import dtype_from_name
from ..errors import BadParameterError, FormatError
from ..formats import container
from ..parallel import SideTask
from . import spz_lossless
from .frames import canonical, quaternions
from .quantize import morton, residual_vq, rvq_decode, unmorton, unzigzag, zigzag
from .rounding import round_shapes
from .scene import Scene, alpha_of
from .spz import dequantize
from .visibility import AUTO_MAX, VIEWS, visibility

FORMAT = 8  # 8: a lossy level's scales and rotations may be residual codebooks (meta geometry); 7: lossless .spz grids by the context-mixing coder; 6: lossless scenes on .spz's grids as spz's integers; 5: level arrays stored as rows or columns; 4: position refinement by opacity, tiers against opacity; 3: rotation tiers; 2: tiers
READABLE = (1, 2, 3, 4, 5, 6, 7, 8)
MAX_TIERS = 9
LEVELS = {
    "high": {"position_bits": 17, "position_refine": 3, "opacity_bits": 8, "scale_step": 1 / 48, "rotation_bits": 10,
             "dc_step": 1 / 48, "rest": [1024, 256], "prune": 0, "tiers": 7},
    "medium": {"position_bits": 14, "position_refine": 3, "opacity_bits": 8, "scale_step": 1 / 12, "rotation_bits": 6,
               "dc_step": 1 / 16, "rest": [256], "prune": 1, "tiers": 7},
    # compact: medium's grids but a coarser DC step, without the Gaussians that 24 renders
    # of the original barely see (hidden: their summed weight, in pixels of 128 x 96, under
    # this), and renders may move a Gaussian two tiers up (seen_up; medium one: the second
    # cost the donut 0.6 dB there). The bench's 24 views at 256 x 192 on the CPU: biker
    # 1,335,376 B at 60.29 dB (0.594x spz, at its 60.14), guitar 834,896 B at 66.65 (0.593x,
    # 63.39); with hidden 1e-4 1,344,848 / 845,008 B. On the donut the drop costs 8.4 dB
    # (54.0 -> 45.6): what its 24 renders barely see, the bench's views do
    "compact": {"position_bits": 14, "position_refine": 3, "opacity_bits": 8, "scale_step": 1 / 12, "rotation_bits": 6,
                "dc_step": 1 / 11, "rest": [256], "prune": 1, "tiers": 7, "seen_up": 2, "hidden": 2e-4, "views": 24},
    "low": {"position_bits": 11, "position_refine": 3, "opacity_bits": 7, "scale_step": 1 / 8, "rotation_bits": 6, "dc_step": 1 / 8,
            "rest": [64], "prune": 2, "tiers": 7, "drop_tiers": 1},
}
# scale and rotation codebooks (encode_scene's geometry="codebooks"): Compact 3D Gaussian
# Splatting's 64 codewords a stage, 6 stages unless asked otherwise
GEOMETRY_CODEWORDS = 64
GEOMETRY_STAGES = 6
MAX_GEOMETRY_STAGES = 16
CANDIDATES = ("ans", "planes", "zstd", "raw")
# about what one more array costs in the container's header (its JSON entry)
ENTRY_BYTES = 250
# the opacity from which a Gaussian's position gets every refinement bit (each halving of
# alpha below it costs one bit per axis): a power of two, so that the rule is exact
POSITION_ALPHA = 0.25


def _best(raw: np.ndarray, dtype_name: str):
    """(the lossless codec that stores these bytes smallest, their size with it)."""
    dtype = dtype_from_name(dtype_name)
    best, size = None, None
    for name in CANDIDATES:
        codec = get_codec(name)
        try:
            codec.check_dtype(dtype)
        except Exception:  # noqa: BLE001 - a codec that does not take this dtype
            continue
        payload = codec.encode_payload(raw, dtype, 1)
        n = sum(memoryview(p).nbytes for p in (payload if isinstance(payload, list) else [payload]))
        if size is None or n < size:
            best, size = codec, n
    return best, size


def _item(name: str, array: np.ndarray, auto: bool = False) -> container.Item:
    return _sized_item(name, array, auto)[0]


def _sized_item(name: str, array: np.ndarray, auto: bool = False) -> tuple[container.Item, int]:
    """(the item, the bytes its payload and its header entry take; 0 with auto, which
    chooses its codec when the file is written)."""
    array = np.ascontiguousarray(array)
    dtype = dtype_from_name(array.dtype.name)
    raw = array.reshape(-1).view(np.uint8)
    if auto:
        return container.Item(name, raw, dtype, tuple(array.shape), "auto"), 0
    codec, size = _best(raw, array.dtype.name)
    return container.Item(name, raw, dtype, tuple(array.shape), codec), size + ENTRY_BYTES


def _index_dtype(k: int):
    return np.uint8 if k <= 256 else np.uint16


def _prune_mask(scene: Scene, mode: int) -> np.ndarray:
    alpha = alpha_of(scene.opacity)
    keep = alpha >= 1 / 255
    if mode >= 2:
        extent = float(np.linalg.norm(np.percentile(scene.positions, 95, axis=0) - np.percentile(scene.positions, 5, axis=0)))
        tiny = np.exp(scene.scales.max(axis=1)) < 1e-3 * max(extent, 1e-12)
        keep &= ~((alpha < 0.02) & tiny)
    return keep


def _tiers(opacity: np.ndarray, scales: np.ndarray, count: int, seen: np.ndarray | None = None, up: int = 1) -> np.ndarray:
    """Each Gaussian's tier, 0..count-1: log2 of its importance against the median, rounded
    and clipped. A Gaussian's share of a render's squared error from a colour or scale
    error d is about (alpha * size * d)^2 (alpha times its footprint), so the steps that
    minimise the error at a given rate are inversely proportional to alpha * size: a tier
    up halves them; with seen, times _seen_factor (at most `up` tiers up). Chosen by the encoder and stored, so
    that the decoder follows it exactly."""
    alpha, size = alpha_of(opacity), _size(scales)
    return _tier_of(alpha * size * _seen_factor(alpha, size, seen, up), count)


def _size(scales: np.ndarray) -> np.ndarray:
    """A Gaussian's size: the geometric mean of its two largest axes (float64)."""
    return np.exp(np.sort(scales.astype(np.float64), axis=1)[:, 1:].mean(axis=1))


def _seen_factor(alpha: np.ndarray, size: np.ndarray, seen: np.ndarray | None, up: int = 1) -> np.ndarray:
    """What renders say of each Gaussian against alpha x size: sqrt(seen x alpha) / (alpha
    x size) (seen: visibility.visibility, about alpha x footprint x transmittance, so this
    is about the square root of the transmittance in front of it), over its median and
    clipped to [1/2, 2^up]: at most a tier down, `up` up. Unclipped, Gaussians the few views miss
    fall to the lowest tier, and the donut lost 14.5 dB; clipped, the donut gains 0.4 dB,
    guitar 2.3 dB, biker 2.2 dB (medium, 12 views at 128 x 96, bytes within 1%). A second
    tier up (H200, medium, bytes within 0.3%) gave guitar 66.58 -> 67.16 dB and biker
    60.22 -> 60.59 dB but the donut 54.47 -> 53.86 dB, no better than without renders: so
    only `compact` (seen_up 2) takes it."""
    if seen is None:
        return np.ones(len(alpha))
    factor = np.sqrt(np.maximum(seen, 0) * alpha) / np.maximum(alpha * size, 1e-300)
    seen_any = factor > 0
    median = float(np.median(factor[seen_any])) if seen_any.any() else 1.0
    return np.clip(factor / median, 0.5, 2.0 ** up)


def _tier_of(importance: np.ndarray, count: int) -> np.ndarray:
    """log2(importance) against its median, rounded, shifted to count // 2 and clipped."""
    log = np.log2(np.maximum(importance, 1e-30))
    return np.clip(np.rint(log - np.median(log)) + count // 2, 0, count - 1).astype(np.uint8)


def _refinement(levels: np.ndarray, opacity_bits: int, refine: int, full_from: float) -> np.ndarray:
    """Each Gaussian's position refinement bits per axis, 0..refine, from its stored opacity
    level: all of them from alpha >= full_from, one fewer per halving below. Moving a
    Gaussian by d changes a render by about (alpha x d)^2 whatever its size (a footprint
    s^2 times a change d/s squared), so its position step should follow 1 / alpha. Only
    exact comparisons (powers of two times the level count): encoder and decoder agree on
    every machine."""
    omax = (1 << opacity_bits) - 1
    levels = np.asarray(levels, np.int64)
    return sum(((levels >= full_from * 2.0 ** (k - refine) * omax).astype(np.int64) for k in range(1, refine + 1)),
               np.zeros(levels.shape, np.int64))


def _floor_log2_alpha(levels: np.ndarray, opacity_bits: int) -> np.ndarray:
    """-(how many halvings of full opacity lie above each level): log2(alpha) rounded up to
    an integer, by exact comparisons only."""
    omax = (1 << opacity_bits) - 1
    levels = np.asarray(levels, np.int64)
    return -sum((levels < omax * 2.0 ** -j).astype(np.int64) for j in range(1, opacity_bits + 1))


def _rotation_tiers(opacity: np.ndarray, scales: np.ndarray, count: int, seen: np.ndarray | None = None,
                    up: int = 1) -> np.ndarray:
    """Each Gaussian's rotation tier, 0..count-1, as _tiers but from alpha * (largest -
    smallest axis) (with seen, times _seen_factor): turning a Gaussian by d moves its
    outline by about its elongation times d, and a round one not at all. Measured at the
    same rotation bytes (medium): guitar +3.1 dB, biker +1.1, gsplat_alti +0.7 (and 9% fewer
    rotation bytes), donut +0.0."""
    alpha = alpha_of(opacity)
    axes = np.exp(np.sort(scales.astype(np.float64), axis=1))
    return _tier_of(alpha * (axes[:, 2] - axes[:, 0]) * _seen_factor(alpha, _size(scales), seen, up), count)


def _by_tier(name: str, levels: np.ndarray, tier: np.ndarray, count: int, layouts: dict) -> list[container.Item]:
    """One array per tier (its rows in scene order), each stored as rows or as columns
    (_columns), whichever is smaller; layouts[f"{name}.{t}"] notes the columns' predictors."""
    out = []
    for t in range(count):
        part = levels[tier == t].astype(np.int64)
        rows, size = _sized_item(f"{name}.{t}", _unsigned(part))
        predictors, columns, sizes = _columns(f"{name}.{t}", part)
        if sum(sizes) < size:
            layouts[f"{name}.{t}"] = predictors
            out += columns
        else:
            out.append(rows)
    return out


def _unsigned(levels: np.ndarray) -> np.ndarray:
    return levels.astype(np.uint8 if levels.max(initial=0) < 256 else np.uint16)


def _columns(name: str, levels: np.ndarray) -> tuple[list[int], list[container.Item], list[int]]:
    """A level array as one array per column (`name.c0`, ...), each with a table of its
    own, and each stored as itself or as its (zigzagged) difference from an earlier column,
    whichever has the lower order-0 entropy: colour channels and a Gaussian's axes move
    together (biker's DC at medium: 272 -> 204 KB). predictors[j]: 0 for itself, k + 1 for
    the difference from column k; sizes: the items' (_sized_item)."""
    predictors, items, sizes = [], [], []
    for j in range(levels.shape[1]):
        options = [levels[:, j]] + [levels[:, j] - levels[:, k] for k in range(j)]
        costs = [_entropy_bytes(np.unique(o, return_counts=True)[1])[0] for o in options]
        best = int(np.argmin(costs))
        predictors.append(best)
        stored = options[0] if best == 0 else zigzag(options[best])
        item, size = _sized_item(f"{name}.c{j}", _unsigned(stored))
        items.append(item)
        sizes.append(size)
    return predictors, items, sizes


def _tier_part(t: dict, name: str, width: int, layouts: dict) -> np.ndarray:
    """One tier's level array, `name`, from rows or from columns (_columns)."""
    predictors = layouts.get(name)
    if predictors is None:
        return t[name].reshape(-1, width)
    if len(predictors) != width:
        raise ValueError(f"{name}: {len(predictors)} column predictors for {width} columns")
    cols = []
    for j, p in enumerate(predictors):
        col = t[f"{name}.c{j}"]
        if not 0 <= int(p) <= j or len(col) != len(t[f"{name}.c0"]):
            raise ValueError(f"{name}: column {j}")
        cols.append(col.astype(np.int64) if p == 0 else cols[int(p) - 1] + unzigzag(col))
    return np.stack(cols, axis=1)


def _join_tiers(t: dict, name: str, tier: np.ndarray, count: int, width: int,
                order: np.ndarray | None = None, layouts: dict | None = None) -> np.ndarray:
    """The per-tier arrays `name.k` back in scene order (each holds its tier's rows in order);
    order: _tier_order(tier), when the caller has it."""
    counts = np.bincount(tier, minlength=count)
    parts = [_tier_part(t, f"{name}.{k}", width, layouts or {}) for k in range(count)]
    for k, part in enumerate(parts):
        if len(part) != counts[k]:
            raise ValueError(f"{name}: tier {k} holds {len(part)} rows, the tiers say {counts[k]}")
    out = np.empty((len(tier), width), np.float64)
    out[_tier_order(tier) if order is None else order] = np.concatenate(parts)  # one scatter, not one per tier
    return out


def _tier_order(tier: np.ndarray) -> np.ndarray:
    """Scene rows tier by tier, in order within each (a radix sort: tiers are < 256)."""
    return np.argsort(tier.astype(np.uint8), kind="stable")


def encode_scene(scene: Scene, path: str | os.PathLike, level: str = "medium", overwrite: bool = False,
                 threads: int = 0, seed: int = 0, refine: int = 0, device="cpu", progress=None,
                 views: int | None = None, any_order: bool = False, geometry: str = "grids",
                 geometry_stages: int = GEOMETRY_STAGES) -> dict:
    """Write `scene` as a .nzs file; returns {"level", "count", "kept", "exact", "bytes", "seconds", "parts"}.

    A lossy level of a scene on .spz's grids is stored losslessly (sorted) where that is
    smaller: "exact" then says every Gaussian comes back bit for bit.

    any_order: lossless may give the same Gaussians back in another order, which a scene on
    .spz's grids takes to sort them (positions about half as large); renders then differ
    where Gaussians tie exactly in depth, as after any shuffle (pod: 90.2 dB on the bench orbit).

    views: renders of the original (nzip.scenes.visibility, on `device`) that the lossy
    levels' tiers take into account (_seen_factor; compact also drops what they barely see),
    0 for alpha x size alone; None (the default): the level's own (compact 24, the others
    visibility.VIEWS) up to visibility.AUTO_MAX Gaussians, 0 above (12 renders of 91K
    Gaussians take 16 s on 2 CPU cores, of 1M 309 s).

    geometry: "grids" (the default: tiers, canonical frames, shape rounding) or "codebooks"
    (a lossy level's scales and rotations as geometry_stages residual codebooks of 64
    codewords, as in Compact 3D Gaussian Splatting; at medium 6 stages take 1.96-2.13x the
    grids' bytes for 0.2-1.8 dB, where grids with finer steps match them at 0.55-0.60x their
    bytes: tools/bench_geometry_vq.py)."""
    if level not in (*LEVELS, "lossless"):
        raise BadParameterError(f"scene level {level!r}: one of low, compact, medium, high, lossless")
    if geometry not in ("grids", "codebooks"):
        raise BadParameterError(f"geometry {geometry!r}: grids or codebooks")
    if geometry == "codebooks" and level == "lossless":
        raise BadParameterError("geometry codebooks are for the lossy levels (lossless keeps every bit)")
    if geometry == "codebooks" and (not isinstance(geometry_stages, int)
                                    or not 1 <= geometry_stages <= MAX_GEOMETRY_STAGES):
        raise BadParameterError(f"geometry codebooks take 1 to {MAX_GEOMETRY_STAGES} stages, got {geometry_stages!r}")
    if not isinstance(refine, int) or refine < 0:
        raise BadParameterError(f"refine is a number of steps (>= 0), got {refine!r}")
    if views is None:
        views = LEVELS.get(level, {}).get("views", VIEWS) if len(scene) <= AUTO_MAX else 0
    if not isinstance(views, int) or views < 0:
        raise BadParameterError(f"views is a number of renders (>= 0), got {views!r}")
    if len(scene) == 0:
        raise FormatError("the scene holds no Gaussians")
    scene.check_finite()
    t0 = time.perf_counter()
    head = _head(scene, level)
    meta = dict(head)
    found = spz_lossless.on_grid(scene) if level == "lossless" else None
    if found is not None:
        items = _spz_items(scene, found, any_order, meta)
    elif level == "lossless":
        items = [_item(n, getattr(scene, n), auto=True)
                 for n in ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations")]
        if scene.normals is not None:
            items.append(_item("normals", scene.normals, auto=True))
        items += [_item(f"extra.{k}", v, auto=True) for k, v in scene.extra.items()]
        meta["extra"] = list(scene.extra)
    else:
        seen = None
        if views:
            seen = visibility(scene, views, device=device)
            meta["importance_views"] = views
        cfg = dict(LEVELS[level], geometry_stages=geometry_stages if geometry == "codebooks" else 0)
        items = _lossy_items(scene, cfg, meta, seed, seen)
        if refine and scene.sh_degree:
            items = _refined(scene, items, meta, refine, device, progress)
    # no room kept for the header: the data moves once to just behind it, where the default
    # 4 KiB would leave blanks in a file of one array (pod's lossless file was 0.4% blanks)
    header = container.write(path, items, metadata=meta, threads=threads, overwrite=overwrite, header_room=0)
    exact = _exact_if_smaller(scene, path, head, threads) if level != "lossless" else None
    if exact is not None:
        header, meta = exact["header"], exact["meta"]
    parts: dict[str, int] = {}
    for e in header["tensors"]:
        group = e["name"].split(".")[0]
        parts[group] = parts.get(group, 0) + e["size"]
    return {"level": level, "count": len(scene), "kept": meta.get("kept", len(scene)), "exact": "spz" in meta or level == "lossless",
            "bytes": os.path.getsize(path), "refined_kept": meta.get("refined_kept"),
            "seconds": time.perf_counter() - t0, "parts": parts}


def _head(scene: Scene, level: str) -> dict:
    """The metadata every scene file has."""
    return {"nzip_scene": FORMAT, "level": level, "count": len(scene), "sh_degree": scene.sh_degree,
            "antialiased": scene.antialiased}


def _spz_items(scene: Scene, found: tuple, any_order: bool, meta: dict) -> list[container.Item]:
    """The items of a scene on .spz's grids (on_grid's `found`) stored losslessly; meta gains "spz"."""
    arrays, version, frac = found
    blob, layout = spz_lossless.encode(arrays, len(scene), scene.sh_degree, version, any_order)
    meta["spz"] = {**layout, "fractional_bits": frac, "sorted": bool(any_order)}
    return [_item("spz.streams", np.frombuffer(blob, np.uint8))]


def _exact_if_smaller(scene: Scene, path, head: dict, threads: int) -> dict | None:
    """A lossy level of a scene on .spz's grids: its lossless coding, sorted (the lossy levels
    reorder the Gaussians too), put in place of the lossy file where that file is larger:
    every Gaussian back bit for bit in fewer bytes (pod at high: 1.58 MB at 44.9 dB, sorted
    lossless 1.15 MB). head: the metadata every scene file has. The new file's header and
    metadata, or None where the lossy file stays."""
    found = spz_lossless.on_grid(scene)
    if found is None:
        return None
    exact = dict(head)
    items = _spz_items(scene, found, True, exact)
    handle, other = tempfile.mkstemp(suffix=".nzs.tmp", dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    try:
        header = container.write(other, items, metadata=exact, threads=threads, overwrite=True, header_room=0)
        if os.path.getsize(other) >= os.path.getsize(path):
            return None
        os.replace(other, path)
    finally:
        if os.path.exists(other):
            os.remove(other)
    return {"header": header, "meta": exact}


def _native_grid(pos: np.ndarray, lo: np.ndarray, hi: np.ndarray, coarse_bits: int):
    """Positions that already lie on a grid (an .spz's 1/4096) no finer than the level's
    coarsest cells: (bits, 0 refinement bits, box) whose cell centres are those grid points
    exactly, or None. The level would spend more bits for less: pod at medium stored 11-14
    bits a axis for 10 bits of positions, 295 KB, and moved each Gaussian off its point."""
    frac = spz_lossless.fractional_bits(pos)
    if frac is None:
        return None
    step = 2.0 ** -frac
    cells = int(np.rint((hi - lo).max() / step)) + 1
    bits = max(1, (cells - 1).bit_length())
    if step * 2.0 ** coarse_bits < (hi - lo).max() or bits > 21:  # finer than the level's cells
        return None
    # cell k's centre is lo - step/2 + (k + 1/2) step = lo + k step, exactly (powers of two)
    low = lo - step / 2
    return bits, 0, low, low + step * 2.0 ** bits


def _lossy_items(scene: Scene, cfg: dict, meta: dict, seed: int, seen: np.ndarray | None = None) -> list[container.Item]:
    """The arrays of a lossy level (cfg: LEVELS' entry, geometry_stages > 0 for scale and
    rotation codebooks)."""
    keep = _prune_mask(scene, cfg["prune"]) if cfg["prune"] else np.ones(len(scene), bool)
    up = cfg.get("seen_up", 1)  # how many tiers renders may move a Gaussian up
    if cfg.get("drop_tiers"):  # the least important tiers are not stored at all (low)
        keep &= _tiers(scene.opacity, scene.scales, cfg["tiers"], seen, up) >= cfg["drop_tiers"]
    if not keep.any():
        keep[np.argmax(scene.opacity)] = True
    # importance tiers: steps halve (rotation bits grow by one) per tier up; computed again
    # for the kept Gaussians (low dropped its weakest tier above): the median they are
    # centred on moves with that pruning, but not with the hidden Gaussians' below
    tier, rtier = np.zeros(len(scene), np.uint8), np.zeros(len(scene), np.uint8)
    kept_seen = None if seen is None else seen[keep]
    tier[keep] = _tiers(scene.opacity[keep], scene.scales[keep], cfg["tiers"], kept_seen, up)
    rtier[keep] = _rotation_tiers(scene.opacity[keep], scene.scales[keep], cfg["tiers"], kept_seen, up)
    if cfg.get("hidden") and seen is not None:  # what the renders barely see (compact)
        hidden = keep & (seen < cfg["hidden"])
        if hidden.sum() < keep.sum():
            keep &= ~hidden
    pos = scene.positions[keep].astype(np.float64)
    n = len(pos)
    # positions: cells of a 2^bits grid over the box; the Morton codes of the coarse cells
    # (refine bits fewer) sorted and stored as deltas, then each Gaussian's refinement bits,
    # as many as its opacity earns (_refinement), one array per bit plane
    bits, refine = cfg["position_bits"], cfg["position_refine"]
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    grid = _native_grid(pos, lo, hi, bits - refine)
    if grid is not None:  # every Gaussian exactly where it was, in fewer bits
        bits, refine, lo, hi = grid
    span = np.where(hi > lo, hi - lo, 1.0)
    fine = np.minimum(np.floor((pos - lo) / span * 2.0 ** bits), 2.0 ** bits - 1).astype(np.uint64)
    code = morton(fine >> np.uint64(refine))
    order = np.argsort(code, kind="stable")
    code, fine = code[order], fine[order]
    deltas = np.diff(code, prepend=np.uint64(0))
    obits = cfg["opacity_bits"]
    meta.update(kept=int(n), position_bits=bits, position_refine=refine, position_alpha=POSITION_ALPHA,
                opacity_bits=obits, box=[lo.tolist(), hi.tolist()])
    items = [_item("positions.deltas", deltas)]

    def take(a):
        return np.ascontiguousarray(a[keep][order])

    # each Gaussian's frame the one of the 24 that draw it alike nearest the identity
    # (nzip.scenes.frames): the same ellipsoids, 3.8% fewer bytes on guitar
    rotations, scales = canonical(take(scene.rotations), take(scene.scales))

    opacity = np.rint(alpha_of(take(scene.opacity)) * ((1 << obits) - 1)).astype(np.uint8)
    items.append(_item("opacity", opacity))
    earned = _refinement(opacity, obits, refine, POSITION_ALPHA)
    for j in range(1, refine + 1):
        plane = (fine[earned >= j] >> np.uint64(refine - j)) & np.uint64(1)
        items.append(_item(f"positions.refine{j}", (plane[:, 0] | plane[:, 1] << 1 | plane[:, 2] << 2).astype(np.uint8)))

    # the tiers stored as the difference from what the opacity alone predicts (the decoder
    # has it): a quarter fewer bytes than the tiers themselves
    tier = take(tier)
    shift = tier.astype(np.int64) - cfg["tiers"] // 2
    from_alpha = _floor_log2_alpha(opacity, obits)
    offset = int(np.median(tier.astype(np.int64) - from_alpha))
    meta.update(tiers=cfg["tiers"], tier_offset=offset)
    predicted = np.clip(from_alpha + offset, 0, cfg["tiers"] - 1)
    items.append(_item("tier", (tier.astype(np.int64) - predicted + cfg["tiers"] - 1).astype(np.uint8)))

    # k-means (SH rest; scale and rotation codebooks) weighs each Gaussian's squared error by
    # its share of a render's, (alpha x size)^2 as for the tiers: medium, same bytes,
    # gsplat_alti 48.4 -> 57.5 dB, try_iter 47.6 -> 49.0, pod 40.6 -> 42.0 (unweighted,
    # codewords went to the many faint Gaussians)
    alpha, size = alpha_of(take(scene.opacity)), _size(take(scene.scales))
    weight = (alpha * size * _seen_factor(alpha, size, None if seen is None else take(seen), up)) ** 2
    weight = torch.as_tensor(weight / max(weight.mean(), 1e-300), dtype=torch.float32)

    layouts: dict[str, list[int]] = {}
    books_of = {}  # residual codebooks: group -> (values, codewords per stage)
    if cfg.get("geometry_stages"):
        books_of.update(_geometry_books(scales, rotations, cfg["geometry_stages"], n, meta))
        grids = [("dc", take(scene.sh_dc), cfg["dc_step"])]
    else:
        # rotations: the smallest three components of the unit quaternion (the largest >= 0
        # is implied), each a signed level of +-1/sqrt(2), and the index of the largest; the
        # grid gains a bit per rotation tier up. Their levels are chosen with the scales' below
        rtier = take(rtier)
        rshift = rtier.astype(np.int64) - cfg["tiers"] // 2
        largest = np.abs(rotations).argmax(axis=1)  # w after canonical, up to float32 near-ties
        rot = np.where(rotations[np.arange(n), largest][:, None] < 0, -rotations, rotations)
        m = ((1 << (cfg["rotation_bits"] - 1 + rshift)) - 1)[:, None]
        grids = [("scale", scales, cfg["scale_step"]), ("dc", take(scene.sh_dc), cfg["dc_step"])]

    # log scales and SH DC: a grid from each column's minimum (step / 2^shift), entropy coded
    # tier by tier (the tiers' levels have different spreads)
    for g, values, step in grids:
        values = values.astype(np.float64)
        base = np.floor(values.min(axis=0) / step) * step
        steps = (step * np.exp2(-shift))[:, None]
        if g == "scale":  # chosen with the rotations' levels, for the ellipsoids they draw
            small, levels = round_shapes(rot, largest, m.astype(np.float64), values, base, steps)
        else:
            levels = np.rint((values - base) / steps)
        meta.update({f"{g}_step": step, f"{g}_base": base.tolist()})
        items += _by_tier(g, levels, tier, cfg["tiers"], layouts)
    if not cfg.get("geometry_stages"):
        # stored as the difference from the importance tier: nearly as small as one array per
        # tier, without six more entries in the header (~1.2 KB, 1% of a small scene's file)
        items.append(_item("rotation.tier", (rtier.astype(np.int64) - tier + cfg["tiers"] - 1).astype(np.uint8)))
        meta["rotation_bits"] = cfg["rotation_bits"]
        items.append(_item("rotation.largest", largest.astype(np.uint8)))
        items += _by_tier("rotation.small", small, rtier, cfg["tiers"], layouts)
    meta["columns"] = layouts
    if scene.sh_degree:
        data = take(scene.sh_rest).reshape(n, -1)
        dim = data.shape[1]  # a codeword costs 2 * dim bytes: small scenes get small books
        books_of["rest"] = (data, [max(1, min(k, max(16, n // (4 * dim)))) for k in cfg["rest"]])
    for g, (data, stages) in books_of.items():
        books, indices = residual_vq(torch.as_tensor(np.asarray(data, np.float32)), stages, seed, weights=weight)
        meta[f"{g}_stages"] = len(books)
        for s, (book, idx) in enumerate(zip(books, indices)):
            items.append(_item(f"{g}.book{s}", book.numpy().astype(np.float16)))
            items.append(_item(f"{g}.index{s}", idx.numpy().astype(_index_dtype(len(book)))))
    return items


def _geometry_books(scales: np.ndarray, rotations: np.ndarray, stages: int, n: int, meta: dict) -> dict:
    """Scale and rotation as Compact 3D Gaussian Splatting stores them: `stages` residual
    codebooks of GEOMETRY_CODEWORDS each, over log scales and unit quaternions (w >= 0; in
    the canonical frames, which gather them near the identity). Not a level's default:
    tools/bench_geometry_vq.py measures them against the grids. (encode_scene checks stages.)"""
    q = rotations.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    q = np.where(q[:, :1] < 0, -q, q)  # q and -q are the same rotation
    meta["geometry"] = "codebooks"
    k = [min(GEOMETRY_CODEWORDS, n)] * stages
    return {"scale": (scales, k), "rotation": (q, k)}


def _refined(scene: Scene, items: list[container.Item], meta: dict, steps: int, device, progress) -> list[container.Item]:
    """items with the SH rest codebooks tuned against renders of `scene` (same format)."""
    from .refine import refine_codebooks

    arrays = {it.name: np.frombuffer(it.raw, np.dtype(it.dtype.name)).reshape(it.shape) for it in items}
    stages = range(int(meta["rest_stages"]))
    books, kept = refine_codebooks(scene, _decode_lossy(arrays, meta), [arrays[f"rest.book{s}"] for s in stages],
                                   [arrays[f"rest.index{s}"] for s in stages], steps, device=device, progress=progress)
    meta["refined_steps"], meta["refined_kept"] = steps, kept  # kept: the steps behind the codebooks stored
    new = {f"rest.book{s}": _item(f"rest.book{s}", book.astype(np.float16)) for s, book in zip(stages, books)}
    return [new.get(it.name, it) for it in items]


def decode_scene(path: str | os.PathLike, threads: int = 0) -> Scene:
    with container.Container(path) as box:
        meta = box.metadata()
        if meta.get("nzip_scene") not in READABLE:
            raise FormatError(f"{path} is not an nzip scene (.nzs) of a format this nzip reads {READABLE}")
        t = box.tensors(framework="numpy", threads=threads)
    try:
        if "spz" in meta:  # lossless, or a lossy level whose sorted lossless coding was smaller
            n, degree, grid = int(meta["count"]), int(meta["sh_degree"]), meta["spz"]
            arrays = spz_lossless.decode(t["spz.streams"].tobytes(), n, degree, grid)
            return dequantize(arrays, n, degree, int(grid["fractional_bits"]), int(grid["version"]),
                              bool(meta.get("antialiased")))
        if meta["level"] == "lossless":
            return Scene(positions=t["positions"], sh_dc=t["sh_dc"], sh_rest=t["sh_rest"], opacity=t["opacity"],
                         scales=t["scales"], rotations=t["rotations"], normals=t.get("normals"),
                         extra={k: t[f"extra.{k}"] for k in meta.get("extra", [])},
                         antialiased=bool(meta.get("antialiased")))
        return _decode_lossy(t, meta)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise FormatError(f"{path}: scene data is inconsistent ({exc!r})") from None


def _decode_lossy(t: dict, meta: dict) -> Scene:
    n = int(meta["kept"])
    version = int(meta["nzip_scene"])
    code = np.cumsum(t["positions.deltas"].astype(np.uint64), dtype=np.uint64)
    if len(code) != n:
        raise ValueError("position count")
    obits = int(meta["opacity_bits"])
    if not 1 <= obits <= 8 or len(t["opacity"]) != n:
        raise ValueError("opacity")
    omax = (1 << obits) - 1
    alpha = np.clip(t["opacity"].astype(np.float64) / omax, 0.25 / omax, 1 - 0.25 / omax)

    def positions_of():
        bits = int(meta["position_bits"])
        lo, hi = (np.asarray(b, np.float64) for b in meta["box"])
        span = np.where(hi > lo, hi - lo, 1.0)
        if version >= 4:
            refine = int(meta["position_refine"])
            if not 0 <= refine < bits <= 21:
                raise ValueError("position bits")
            earned = _refinement(t["opacity"], obits, refine, float(meta["position_alpha"]))
            # the refinement bits, plus half of the cell they narrow the position down to
            extra = np.repeat(np.exp2(refine - earned - 1)[:, None], 3, axis=1)
            for j in range(1, refine + 1):
                sel = earned >= j
                plane = t[f"positions.refine{j}"]
                if len(plane) != int(sel.sum()):
                    raise ValueError(f"position refinement {j}")
                extra[sel] += ((plane[:, None] >> np.arange(3, dtype=np.uint8)) & 1) * float(1 << (refine - j))
            coarse = unmorton(code).astype(np.float64) * float(1 << refine)
            positions = (lo + (coarse + extra) / 2.0 ** bits * span).astype(np.float32)
        else:
            positions = (lo + unmorton(code).astype(np.float64) / ((1 << bits) - 1) * span).astype(np.float32)
        return positions

    def group(g):
        stages = int(meta[f"{g}_stages"])
        if not 1 <= stages <= 64:
            raise ValueError(f"{g} stages")
        for s in range(stages):  # every index names a codeword, every stage one per Gaussian
            book, idx = t[f"{g}.book{s}"], t[f"{g}.index{s}"]
            if len(idx) != n or (len(idx) and int(idx.max()) >= len(book)) or book.ndim != 2:
                raise ValueError(f"{g} codebook {s}")
        return rvq_decode([t[f"{g}.book{s}"].astype(np.float32) for s in range(stages)],
                          [t[f"{g}.index{s}"] for s in range(stages)])

    degree = int(meta["sh_degree"])
    k = {0: 0, 1: 3, 2: 8, 3: 15}[degree]
    # positions and SH rest on other cores while this one does the grids and rotations
    # (numpy lets go of the GIL in its loops): 1M SH3 at medium 0.98 -> 0.58 s
    positions = SideTask(positions_of)
    rest = SideTask(lambda: group("rest").reshape(n, k, 3) if degree else np.zeros((n, 0, 3), np.float32))
    positions.start()
    rest.start()
    # format 1 had no tiers: one tier, its arrays unsuffixed
    count = int(meta.get("tiers", 1))
    if not 1 <= count <= MAX_TIERS:
        raise ValueError("tier count")
    layouts = meta.get("columns", {}) if version >= 5 else {}
    if not isinstance(layouts, dict):
        raise ValueError("column layouts")
    if "tiers" in meta:
        tier = t["tier"].astype(np.int64)
        if version >= 4:  # stored as the difference from the opacity's prediction
            tier += np.clip(_floor_log2_alpha(t["opacity"], obits) + int(meta["tier_offset"]), 0, count - 1) - (count - 1)
        if len(tier) != n or tier.min(initial=0) < 0 or tier.max(initial=0) >= count:
            raise ValueError("tiers")
        order = _tier_order(tier)
        split = lambda name, width: _join_tiers(t, name, tier, count, width, order, layouts)  # noqa: E731
    else:
        tier = np.zeros(n, np.int64)
        split = lambda name, width: t[name].astype(np.float64).reshape(-1, width)  # noqa: E731
    shift = tier - count // 2

    def grid(g):
        return np.asarray(meta[f"{g}_base"]) + split(g, 3) * (float(meta[f"{g}_step"]) * np.exp2(-shift))[:, None]

    def grid_rotations():
        if version >= 3:  # rotation tiers, stored as differences from the tiers
            rtier = t["rotation.tier"].astype(np.int64) + tier - (count - 1)
            if len(rtier) != n or rtier.min(initial=0) < 0 or rtier.max(initial=0) >= count:
                raise ValueError("rotation tiers")
            rshift, levels = rtier - count // 2, _join_tiers(t, "rotation.small", rtier, count, 3, layouts=layouts)
        else:
            rshift, levels = shift, split("rotation.small", 3)
        rbits = int(meta["rotation_bits"]) - 1 + rshift
        if len(rbits) and not (1 <= rbits.min() and rbits.max() <= 15):
            raise ValueError("rotation bits")
        m = ((1 << rbits) - 1)[:, None].astype(np.float64)
        largest = t["rotation.largest"].astype(np.int64)
        if largest.max(initial=0) > 3:
            raise ValueError("rotation index")
        return quaternions(levels, m, largest)

    geometry = meta.get("geometry", "grids") if version >= 8 else "grids"
    if geometry == "grids":
        scales, rot = grid("scale"), grid_rotations()
    elif geometry == "codebooks":
        scales = group("scale").reshape(n, 3)
        rot = group("rotation").reshape(n, 4).astype(np.float64)
        norm = np.linalg.norm(rot, axis=1, keepdims=True)
        rot = np.where(norm > 1e-12, rot / np.maximum(norm, 1e-12), np.array([1.0, 0, 0, 0]))
    else:
        raise ValueError(f"geometry {geometry!r}")
    return Scene(positions=positions.result(), sh_dc=grid("dc").astype(np.float32), sh_rest=rest.result(),
                 opacity=np.log(alpha / (1 - alpha)).astype(np.float32), scales=scales.astype(np.float32),
                 rotations=rot.astype(np.float32), antialiased=bool(meta.get("antialiased")))


__all__ = ["LEVELS", "decode_scene", "encode_scene"]
