"""How close a decoded scene looks to its original: renders of both from the same cameras
compared by PSNR and SSIM, and a picture a person can look at.

    report = fidelity(original, decoded)        # {"psnr", "ssim", "views", "exact", "per_view": [...]}
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

from .render import Camera, SceneTensors, orbit, render
from .scene import Scene


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
