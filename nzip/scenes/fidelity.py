"""How close a decoded scene looks to its original: renders of both from the same cameras
compared by PSNR and SSIM, and a picture a person can look at.

    report = fidelity(original, decoded)        # {"psnr", "ssim", "views", "exact", "per_view": [...]}
    errors = attribute_errors(original, decoded)  # {"matched", "position", "opacity", ...}
    write_png(side_by_side(original, decoded), "compare.png")

Cameras: cameras.json beside the original when there is one (the 3DGS trainers' format),
otherwise a fixed orbit of 24 cameras around the scene (render.orbit). Renders are clamped
to [0, 1]; PSNR is the mean over views of each view's PSNR (at most 100 dB, which views
with no error or only float rounding's count as; "exact" says whether every view came out
identical); SSIM uses the usual 11 x 11 Gaussian window (sigma 1.5) on each colour channel.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .quantize import morton
from .render import Camera, SceneTensors, _rotation_matrices, orbit, render
from .scene import Scene, alpha_of


IDENTICAL_DB = 100.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1], at most 100: beyond that (an RMS error under 1e-5)
    the difference is float rounding, and a view that no error at all would make infinite
    must not count less than one with rounding's."""
    mse = float(torch.mean((a - b) ** 2))
    return IDENTICAL_DB if mse == 0 else min(IDENTICAL_DB, 10 * math.log10(1.0 / mse))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two H x W x 3 images in [0, 1]."""
    # float64: the variances are differences of near-equal means, which float32 (and CUDA's
    # TF32 convolutions) round to SSIMs above 1 for near-identical images (1.0001 seen)
    x = a.permute(2, 0, 1)[:, None].double()
    y = b.permute(2, 0, 1)[:, None].double()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64, device=a.device) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(z):
        return F.conv2d(z, window)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def cameras_for(scene: Scene, path: str | Path | None = None, views: int = 24, width: int = 320,
                height: int = 240) -> list[Camera]:
    """The cameras of cameras.json beside `path` (scaled to `width`), else an orbit."""
    if path is not None:
        found = Path(path).with_name("cameras.json")
        if found.is_file():
            cams = []
            for c in json.loads(found.read_text())[:views]:
                R_c2w = np.asarray(c["rotation"], np.float64)
                R = R_c2w.T
                scale = width / c["width"]
                cams.append(Camera(R, -R @ np.asarray(c["position"], np.float64), c["fx"] * scale, c["fy"] * scale,
                                   width / 2, c["height"] * scale / 2, width, int(round(c["height"] * scale))))
            if cams:
                return cams
    return orbit(scene, views, width, height)


def renders(scene: Scene, cameras: list[Camera], device="cpu") -> list[torch.Tensor]:
    """The scene from every camera, clamped to [0, 1] (render an original once, compare often)."""
    g = SceneTensors(scene, device)
    return [render(g, cam).clamp(0, 1) for cam in cameras]


def fidelity(original: Scene | list[torch.Tensor], decoded: Scene, cameras: list[Camera] | None = None,
             device="cpu") -> dict:
    """original: a scene, or its renders from `cameras` (renders())."""
    if isinstance(original, Scene):
        cams = cameras or orbit(original)
        targets = renders(original, cams, device)
    else:
        cams, targets = cameras, original
    per_view, exact = [], True
    for x, y in zip(targets, renders(decoded, cams, device)):
        per_view.append({"psnr": psnr(x, y), "ssim": ssim(x, y)})
        exact = exact and bool(torch.equal(x, y))
    return {"psnr": float(np.mean([v["psnr"] for v in per_view])),
            "ssim": float(np.mean([v["ssim"] for v in per_view])), "views": len(cams), "exact": exact,
            "per_view": per_view}


MATCH_WINDOW = 32  # originals looked at on each side of a decoded Gaussian in Morton order
SH_C0 = 0.28209479177387814  # colour per unit of SH DC


def _attributes(scene: Scene, spreads: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, DC and sorted log scales, each over its spread in the original; the spreads)."""
    attrs = np.concatenate([alpha_of(scene.opacity)[:, None],
                            scene.sh_dc.astype(np.float64), np.sort(scene.scales.astype(np.float64), axis=1)], axis=1)
    if spreads is None:
        spreads = np.maximum(attrs.std(axis=0), 1e-12)
    return attrs / spreads, spreads


def match(original: Scene, decoded: Scene, window: int = MATCH_WINDOW) -> np.ndarray:
    """For each decoded Gaussian, the row of the original it most likely came from: among
    the `window` before and after it in Morton order on three grids a third of the box apart
    (Morton order jumps at its cells' edges; the grids have them in other places), the
    nearest in position over the scene's mean spacing and in opacity, DC and scales over
    their spreads. Position alone picks the wrong one in dense clusters, where neighbours
    lie closer than a level's grid cell (gsplat_alti: 28% closer than 1/2^17 of the box;
    its opacity rms at medium came out 0.31 by position alone, 0.06 with the reach of
    twice each one's nearest distance, 0.011 so). The lossy levels reorder and prune, so
    rows cannot be compared as stored. In slices: a few hundred MB at most."""
    p, q = original.positions.astype(np.float64), decoded.positions.astype(np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0) * (1 + 2.0 ** -10)
    extent = np.maximum(np.percentile(p, 95, axis=0) - np.percentile(p, 5, axis=0), 1e-12)
    spacing = float(np.prod(extent) / len(p)) ** (1 / 3)
    ap, spreads = _attributes(original)
    aq, _ = _attributes(decoded, spreads)
    best, best_d = np.zeros(len(q), np.int64), np.full(len(q), np.inf)
    for offset in (0, (1 << 20) // 3, (2 << 20) // 3):  # in cells of 2^20 across the box
        def codes(x):
            cells = np.clip(np.floor((x - lo) / span * 2.0 ** 20) + offset, 0, 2 ** 21 - 1)
            return morton(cells.astype(np.uint64))

        cp = codes(p)
        order = np.argsort(cp, kind="stable")
        sorted_p, sorted_a, at = p[order], ap[order], np.searchsorted(cp[order], codes(q))
        for a in range(0, len(q), 1 << 14):
            b = min(len(q), a + (1 << 14))
            cand = np.clip(at[a:b, None] + np.arange(-window, window)[None, :], 0, len(p) - 1)
            d = ((sorted_p[cand] - q[a:b, None, :]) ** 2).sum(axis=2) / spacing ** 2
            d += ((sorted_a[cand] - aq[a:b, None, :]) ** 2).sum(axis=2)
            k = d.argmin(axis=1)
            dk = d[np.arange(b - a), k]
            better = dk < best_d[a:b]
            best[a:b] = np.where(better, order[cand[np.arange(b - a), k]], best[a:b])
            best_d[a:b] = np.minimum(dk, best_d[a:b])
    return best


def _covariances(scene: Scene, rows=slice(None)) -> torch.Tensor:
    R = _rotation_matrices(torch.as_tensor(scene.rotations[rows], dtype=torch.float64))
    M = R * torch.exp(torch.as_tensor(scene.scales[rows], dtype=torch.float64))[:, None, :]
    return M @ M.transpose(1, 2)


def attribute_errors(original: Scene, decoded: Scene) -> dict:
    """Per-attribute errors of the decoded Gaussians against their originals (`match`, or
    row by row where the two scenes have the same positions in the same order). Each is
    {"rms", "max"}: position (scene units), opacity (alpha, 0-1), colour (the SH DC as RGB,
    0-1), sh_rest (coefficients; absent where the degrees differ) and covariance (|S_a -
    S_b| / |S_a|, Frobenius: the ellipsoid drawn, whatever frame its rotation and scales
    are written in). "matched": how many decoded Gaussians, "of": the original's count."""
    same = len(original) == len(decoded) and np.array_equal(original.positions, decoded.positions)
    rows = np.arange(len(decoded)) if same else match(original, decoded)

    def stats(err: np.ndarray) -> dict:
        err = np.abs(np.asarray(err, np.float64)).reshape(len(rows), -1)
        return {"rms": float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0, "max": float(err.max(initial=0))}

    out = {"matched": int(len(rows)), "of": len(original),
           "position": stats(np.linalg.norm(decoded.positions.astype(np.float64) - original.positions[rows], axis=1)),
           "opacity": stats(alpha_of(decoded.opacity) - alpha_of(original.opacity[rows])),
           "colour": stats((decoded.sh_dc.astype(np.float64) - original.sh_dc[rows]) * SH_C0)}
    if original.sh_rest.shape[1:] == decoded.sh_rest.shape[1:]:
        out["sh_rest"] = stats(decoded.sh_rest.astype(np.float64) - original.sh_rest[rows])
    a, b = _covariances(original, rows), _covariances(decoded)
    rel = torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(a).clamp_min(1e-300)
    out["covariance"] = stats(rel.numpy())
    return out


def side_by_side(original: Scene, decoded: Scene, cameras: list[Camera] | None = None, views: int = 4,
                 device="cpu") -> np.ndarray:
    """Rows of (original, decoded, error x 4) renders, uint8 RGB."""
    cams = (cameras or orbit(original))[:views]
    a, b = SceneTensors(original, device), SceneTensors(decoded, device)
    rows = []
    for cam in cams:
        x, y = render(a, cam).clamp(0, 1), render(b, cam).clamp(0, 1)
        rows.append(torch.cat([x, y, ((x - y).abs() * 4).clamp(0, 1)], dim=1))
    return (torch.cat(rows, dim=0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def write_png(rgb: np.ndarray, path: str | Path) -> None:
    """An 8-bit RGB PNG (zlib only, no imaging library needed)."""
    from ..formats.atomic import atomic_write

    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with atomic_write(path, overwrite=True) as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
