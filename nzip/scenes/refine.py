"""Codebook refinement against renders of the original scene (no training images needed).

k-means fits the SH codebooks to the coefficients, every Gaussian alike; what a viewer sees
weighs them by how much of each image they cover. So, after quantisation, the codewords are
tuned by gradient descent on the squared error between renders of the decoded scene and
renders of the original, everything else (positions, scales, rotations, opacity, DC, the
codeword indices) held at its decoded value. The file format does not change: only the
codewords' values do, and the decoder reads them as before.

The training cameras are not the ones `fidelity` judges by: an orbit at other elevations
(+-10 and +-35 degrees) and azimuths (half a step apart), so that a better score is not a
fit to the judge's views. The renderer is nzip.scenes.render (differentiable, CPU or CUDA);
on CUDA with gsplat installed, gsplat's rasteriser, about a thousand times faster.

Refinement can also make things worse: where k-means' codebooks are already close (gsplat_alti
at high: -1.4 dB after 2000 steps through gsplat), the steps' noise and gsplat's small
differences from nzip's renderer outweigh what is left to gain. So a third set of cameras
(`validation_cameras`, neither the judge's nor the training ones) is rendered with nzip's
renderer before the first step and at CHECKS points along the way, and the codebooks that
rendered closest there are the ones returned: the unrefined ones, if nothing did better.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .render import NEAR, Camera, SceneTensors, orbit, render
from .scene import Scene

ELEVATIONS = (10, -10, 35, -35)
VALIDATION_ELEVATIONS = (0, 25, -25)
CHECKS = 8  # validations along the way (each renders every validation camera once)
DEFAULT_LR = 1e-4  # Adam's step (codebook entries are ~0.01-0.3): best of a sweep on the H200 at 2000 steps


def training_cameras(scene: Scene, views: int = 48, width: int = 256, height: int = 192,
                     fov_deg: float = 60.0) -> list[Camera]:
    """render.orbit at the elevations ELEVATIONS in turn, azimuths half a step off its own."""
    return orbit(scene, views, width, height, fov_deg, elevations=ELEVATIONS, phase=0.5)


def validation_cameras(scene: Scene, views: int = 12, width: int = 256, height: int = 192,
                       fov_deg: float = 60.0) -> list[Camera]:
    """render.orbit at VALIDATION_ELEVATIONS in turn, azimuths a quarter step off its own."""
    return orbit(scene, views, width, height, fov_deg, elevations=VALIDATION_ELEVATIONS, phase=0.25)


# gsplat.rasterization's settings that draw what render.render draws (black background)
GSPLAT_ARGS = {"near_plane": NEAR, "eps2d": 0.3, "packed": False, "rasterize_mode": "classic"}


def gsplat_cameras(cams: list[Camera], device) -> tuple[torch.Tensor, torch.Tensor]:
    """The cameras as gsplat takes them: world-to-camera matrices (C x 4 x 4) and
    intrinsics (C x 3 x 3), float32 on `device`."""
    viewmats = torch.zeros(len(cams), 4, 4)
    Ks = torch.zeros(len(cams), 3, 3)
    for i, c in enumerate(cams):
        viewmats[i, :3, :3] = torch.as_tensor(c.R)
        viewmats[i, :3, 3] = torch.as_tensor(c.t)
        viewmats[i, 3, 3] = 1
        Ks[i] = torch.tensor([[c.fx, 0, c.cx], [0, c.fy, c.cy], [0, 0, 1]])
    return viewmats.to(device), Ks.to(device)


def _gsplat_renderer(scene: Scene, device) -> Callable | None:
    """render(sh_rest, cam) through gsplat, when on CUDA and gsplat imports."""
    if torch.device(device).type != "cuda":
        return None
    try:
        from gsplat import rasterization
    except ImportError:
        return None

    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)

    means, quats, scales = t(scene.positions), t(scene.rotations), torch.exp(t(scene.scales))
    opacities, dc = torch.sigmoid(t(scene.opacity)), t(scene.sh_dc)[:, None, :]

    def draw(sh_rest: torch.Tensor, cam: Camera) -> torch.Tensor:
        view, K = gsplat_cameras([cam], device)
        image, _, _ = rasterization(means, quats, scales, opacities, torch.cat([dc, sh_rest], dim=1), view, K,
                                    cam.width, cam.height, sh_degree=scene.sh_degree, **GSPLAT_ARGS)
        return image[0]

    return draw


def renderer(scene: Scene, device="cpu", use_gsplat: bool = True) -> Callable[[torch.Tensor, Camera], torch.Tensor]:
    """draw(sh_rest, cam) -> image: `scene` with its SH rest replaced (differentiably)."""
    fast = _gsplat_renderer(scene, device) if use_gsplat else None
    if fast is not None:
        return fast
    g = SceneTensors(scene, device)

    def draw(sh_rest: torch.Tensor, cam: Camera) -> torch.Tensor:
        g.sh_rest = sh_rest
        return render(g, cam)

    return draw


def refine_codebooks(original: Scene, decoded: Scene, books: list[np.ndarray], indices: list[np.ndarray],
                     steps: int, lr: float | None = None, views: int = 48, size: tuple[int, int] = (256, 192),
                     device="cpu", use_gsplat: bool = True, progress: Callable[[int, float], None] | None = None,
                     validation_views: int = 12) -> tuple[list[np.ndarray], int]:
    """The codebooks (stages of residual VQ of the SH rest, decoded.sh_rest = sum of
    books[s][indices[s]]) after up to `steps` Adam steps, one training camera a step, on the
    mean squared error between the clamped renders: those of the validation (0 to CHECKS of
    the way, every steps // CHECKS) that rendered closest on `validation_views` held-out
    cameras at half the size (0: no validation, the last ones), and how many steps they had taken (0: the
    codebooks as given were the closest). float32 arrays, shaped as given."""
    cams = training_cameras(original, views, *size)
    target_draw = renderer(original, device, use_gsplat)
    rest0 = torch.as_tensor(original.sh_rest, dtype=torch.float32, device=device)
    targets: dict[int, torch.Tensor] = {}  # rendered when first needed (few steps, few renders)
    draw = renderer(decoded, device, use_gsplat)
    k = decoded.sh_rest.shape[1]
    params = [torch.tensor(b, dtype=torch.float32, device=device, requires_grad=True) for b in books]
    idx = [torch.as_tensor(i.astype(np.int64), device=device) for i in indices]
    opt = torch.optim.Adam(params, lr=DEFAULT_LR if lr is None else lr)

    def current():
        return sum(b[i] for b, i in zip(params, idx)).view(-1, k, 3)

    # at half the training size: a quarter of the cost (on the CPU, 2 steps' validations cost
    # more than the steps), and which codebooks render closer shows at any size
    half = (max(size[0] // 2, 16), max(size[1] // 2, 16))
    validate = _validator(original, decoded, rest0, validation_views, half, device) if validation_views else None
    every = max(steps // CHECKS, 1)
    best = (validate(current()), 0, [p.detach().clone() for p in params]) if validate else None
    for step in range(steps):
        cam = step % len(cams)
        if cam not in targets:
            with torch.no_grad():
                targets[cam] = target_draw(rest0, cams[cam]).clamp(0, 1)
        loss = torch.mean((draw(current(), cams[cam]).clamp(0, 1) - targets[cam]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step, float(loss.detach()))
        if validate and ((step + 1) % every == 0 or step + 1 == steps):
            error = validate(current())
            if error < best[0]:
                best = (error, step + 1, [p.detach().clone() for p in params])
    if best is None:
        return [p.detach().cpu().numpy() for p in params], steps
    return [p.cpu().numpy() for p in best[2]], best[1]


def _validator(original: Scene, decoded: Scene, rest0: torch.Tensor, views: int, size: tuple[int, int],
               device) -> Callable:
    """error(sh_rest): the mean squared error on the validation cameras, rendered by nzip's
    renderer (the one fidelity judges with), against the original's (its SH rest: rest0)."""
    cams = validation_cameras(original, views, *size)
    target_draw, draw = renderer(original, device, False), renderer(decoded, device, False)
    with torch.no_grad():
        targets = [target_draw(rest0, c).clamp(0, 1) for c in cams]

    def error(sh_rest: torch.Tensor) -> float:
        with torch.no_grad():
            return sum(float(torch.mean((draw(sh_rest, c).clamp(0, 1) - t) ** 2)) for c, t in zip(cams, targets))

    return error


__all__ = ["GSPLAT_ARGS", "gsplat_cameras", "refine_codebooks", "renderer", "training_cameras", "validation_cameras"]
