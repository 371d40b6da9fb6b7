"""A reference renderer for Gaussian-splat scenes: tile-based EWA splatting in plain PyTorch.

It follows the rasteriser of 3D Gaussian Splatting (Kerbl et al. 2023) so that a codec's
fidelity can be judged by what a viewer shows, on the CPU (or CUDA when tensors live there):

- each Gaussian's covariance R S S^T R^T is projected with the Jacobian of the perspective
  map (view-space x/z and y/z clamped to 1.3 x the field of view, as 3DGS does) and widened
  by a 0.3-pixel low-pass; its footprint is 3 sigma of the larger eigenvalue;
- colours come from the spherical harmonics (degree 0-3) in the direction from the camera,
  + 0.5, clamped at 0;
- the image is cut in 16 x 16 tiles; every tile sorts the Gaussians that touch it by depth
  (ties in the file's order) and composites them front to back:
  alpha = min(0.99, opacity * exp(-d^T conic d / 2)), skipped under 1/255 (and where the
  exponent is positive), and a Gaussian that would bring the transmittance under 1e-4 ends
  the pixel (it and all behind it are left out). Pixel centres at +0.5. Black background.

Work is vectorised over tiles: the sorted lists are cut in chunks of CHUNK Gaussians, and
chunk k of every tile is composited at once, carrying each pixel's transmittance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .scene import Scene

TILE = 16
NEAR = 0.2  # Gaussians nearer the camera than this are not drawn
CHUNK = 32
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


@dataclass
class Camera:
    """A pinhole camera, OpenCV convention (x right, y down, z forward), world to camera."""

    R: np.ndarray  # 3 x 3
    t: np.ndarray  # 3
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray, width: int, height: int, fov_x: float) -> Camera:
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    fx = 0.5 * width / math.tan(0.5 * fov_x)
    return Camera(R, -R @ eye, fx, fx, width / 2, height / 2, width, height)


def orbit(scene: Scene, views: int = 24, width: int = 320, height: int = 240, fov_deg: float = 60.0,
          elevations: tuple[float, ...] = (20, -20), phase: float = 0.0) -> list[Camera]:
    """`views` cameras on a ring around the scene, at the elevations (degrees above its
    centre) in turn, 20 above and below by default, azimuths `phase` of a step from 0 (robust
    centre and radius: the median position, and the 90th-percentile distance from it),
    looking at the centre; 'up' is -y (COLMAP scenes have y pointing down)."""
    p = scene.positions.astype(np.float64)
    center = np.median(p, axis=0)
    radius = float(np.percentile(np.linalg.norm(p - center, axis=1), 90)) or 1.0
    distance = radius / math.tan(math.radians(fov_deg) / 2) * 1.1
    cams = []
    for i in range(views):
        azimuth = 2 * math.pi * (i + phase) / views
        elevation = math.radians(elevations[i % len(elevations)])
        offset = np.array([math.cos(elevation) * math.sin(azimuth), -math.sin(elevation),
                           math.cos(elevation) * math.cos(azimuth)])
        cams.append(look_at(center + distance * offset, center, np.array([0.0, -1.0, 0.0]), width, height,
                            math.radians(fov_deg)))
    return cams


def sh_colour(sh_dc: torch.Tensor, sh_rest: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """RGB from SH coefficients (N x 3 and N x K x 3) in unit directions (N x 3)."""
    c = SH_C0 * sh_dc
    k = sh_rest.shape[1]
    if k >= 3:
        x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
        c = c - SH_C1 * y * sh_rest[:, 0] + SH_C1 * z * sh_rest[:, 1] - SH_C1 * x * sh_rest[:, 2]
        if k >= 8:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            c = (c + SH_C2[0] * xy * sh_rest[:, 3] + SH_C2[1] * yz * sh_rest[:, 4]
                 + SH_C2[2] * (2 * zz - xx - yy) * sh_rest[:, 5] + SH_C2[3] * xz * sh_rest[:, 6]
                 + SH_C2[4] * (xx - yy) * sh_rest[:, 7])
            if k >= 15:
                c = (c + SH_C3[0] * y * (3 * xx - yy) * sh_rest[:, 8] + SH_C3[1] * xy * z * sh_rest[:, 9]
                     + SH_C3[2] * y * (4 * zz - xx - yy) * sh_rest[:, 10]
                     + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh_rest[:, 11]
                     + SH_C3[4] * x * (4 * zz - xx - yy) * sh_rest[:, 12]
                     + SH_C3[5] * z * (xx - yy) * sh_rest[:, 13] + SH_C3[6] * x * (xx - 3 * yy) * sh_rest[:, 14])
    return torch.clamp(c + 0.5, min=0.0)


def _rotation_matrices(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=1).view(-1, 3, 3)


class SceneTensors:
    """A scene's attributes as float32 tensors on a device, activated once for many views."""

    def __init__(self, scene: Scene, device="cpu"):
        def t(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)

        self.device = torch.device(device)
        self.means = t(scene.positions)
        self.sh_dc, self.sh_rest = t(scene.sh_dc), t(scene.sh_rest)
        self.opacity = torch.sigmoid(t(scene.opacity))
        S = torch.exp(t(scene.scales))
        M = _rotation_matrices(t(scene.rotations)) * S[:, None, :]
        self.cov3d = M @ M.transpose(1, 2)


def render(scene: Scene | SceneTensors, cam: Camera, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The image (height x width x 3, float32, not clamped) that `cam` sees. seen: a
    tensor of one float per Gaussian, to which each Gaussian's weight in the image (the
    sum over pixels of transmittance x alpha) is added."""
    g = scene if isinstance(scene, SceneTensors) else SceneTensors(scene)
    dev = g.device
    R = torch.as_tensor(cam.R, dtype=torch.float32, device=dev)
    T = torch.as_tensor(cam.t, dtype=torch.float32, device=dev)
    p = g.means @ R.T + T
    depth = p[:, 2]
    visible = depth > NEAR
    idx = torch.nonzero(visible).squeeze(1)
    p, depth = p[idx], depth[idx]
    lim_x = 1.3 * (0.5 * cam.width / cam.fx)
    lim_y = 1.3 * (0.5 * cam.height / cam.fy)
    tx = (p[:, 0] / depth).clamp(-lim_x, lim_x) * depth
    ty = (p[:, 1] / depth).clamp(-lim_y, lim_y) * depth
    J = torch.zeros(len(idx), 2, 3, device=dev)
    J[:, 0, 0] = cam.fx / depth
    J[:, 0, 2] = -cam.fx * tx / depth ** 2
    J[:, 1, 1] = cam.fy / depth
    J[:, 1, 2] = -cam.fy * ty / depth ** 2
    JW = J @ R
    cov = JW @ g.cov3d[idx] @ JW.transpose(1, 2)
    a = cov[:, 0, 0] + 0.3
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + 0.3
    det = a * c - b * b
    u = cam.fx * p[:, 0] / depth + cam.cx
    v = cam.fy * p[:, 1] / depth + cam.cy
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
    radius = torch.ceil(3 * torch.sqrt(lam))
    tiles_x, tiles_y = -(-cam.width // TILE), -(-cam.height // TILE)
    x0 = ((u - radius) / TILE).floor().clamp(0, tiles_x).long()
    x1 = ((u + radius + TILE - 1) / TILE).floor().clamp(0, tiles_x).long()
    y0 = ((v - radius) / TILE).floor().clamp(0, tiles_y).long()
    y1 = ((v + radius + TILE - 1) / TILE).floor().clamp(0, tiles_y).long()
    keep = (det > 0) & (x1 > x0) & (y1 > y0)
    sel = torch.nonzero(keep).squeeze(1)
    if sel.numel() == 0:
        return torch.zeros(cam.height, cam.width, 3, device=dev)
    idx, u, v, depth = idx[sel], u[sel], v[sel], depth[sel]
    conic = torch.stack([c[sel], -b[sel], a[sel]], dim=1) / det[sel, None]
    x0, x1, y0, y1 = x0[sel], x1[sel], y0[sel], y1[sel]
    centre = torch.as_tensor(cam.center, dtype=torch.float32, device=dev)
    dirs = g.means[idx] - centre
    colour = sh_colour(g.sh_dc[idx], g.sh_rest[idx], dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12))
    opacity = g.opacity[idx]

    # (tile, depth) pairs: every Gaussian once per tile its footprint touches
    w, h = x1 - x0, y1 - y0
    counts = w * h
    n = len(idx)
    owner = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    local = torch.arange(int(counts.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    tile = (y0[owner] + local // w[owner]) * tiles_x + x0[owner] + local % w[owner]
    rank = torch.empty(n, dtype=torch.long, device=dev)
    # ties in depth composite in the file's order, as 3DGS's and gsplat's stable radix sorts do
    rank[torch.argsort(depth, stable=True)] = torch.arange(n, device=dev)
    order = torch.argsort(tile * n + rank[owner])
    tile, owner = tile[order], owner[order]
    ntiles = tiles_x * tiles_y
    per_tile = torch.bincount(tile, minlength=ntiles)
    start = torch.cumsum(per_tile, 0) - per_tile

    # pixels of every tile
    ty_, tx_ = torch.div(torch.arange(ntiles, device=dev), tiles_x, rounding_mode="floor"), torch.arange(ntiles, device=dev) % tiles_x
    py, px = torch.meshgrid(torch.arange(TILE, device=dev), torch.arange(TILE, device=dev), indexing="ij")
    pix_x = (tx_[:, None] * TILE + px.reshape(1, -1)).float() + 0.5  # pixel centres
    pix_y = (ty_[:, None] * TILE + py.reshape(1, -1)).float() + 0.5
    trans = torch.ones(ntiles, TILE * TILE, device=dev)
    done = torch.zeros(ntiles, TILE * TILE, dtype=torch.bool, device=dev)  # transmittance ran out
    image = torch.zeros(ntiles, TILE * TILE, 3, device=dev)
    for k0 in range(0, int(per_tile.max()), CHUNK):
        active = torch.nonzero(per_tile > k0).squeeze(1)
        slot = k0 + torch.arange(CHUNK, device=dev)
        valid = slot[None, :] < per_tile[active, None]  # A x CHUNK
        gid = owner[(start[active, None] + slot[None, :]).clamp(max=owner.numel() - 1)]
        dx = pix_x[active][:, None, :] - u[gid][:, :, None]  # A x CHUNK x P
        dy = pix_y[active][:, None, :] - v[gid][:, :, None]
        cg = conic[gid]
        power = -0.5 * (cg[..., 0, None] * dx * dx + cg[..., 2, None] * dy * dy) - cg[..., 1, None] * dx * dy
        alpha = torch.clamp(opacity[gid][:, :, None] * torch.exp(power), max=0.99)
        alpha = torch.where(valid[:, :, None] & (power <= 0) & (alpha >= 1 / 255), alpha, torch.zeros((), device=dev))
        t_before = trans[active][:, None, :] * torch.cumprod(
            torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
        # the first Gaussian that would leave less than 1e-4 ends the pixel: it and all after
        ends = (t_before * (1 - alpha) < 1e-4) & (alpha > 0)
        live = ~(torch.cumsum(ends.int(), dim=1) > 0) & ~done[active][:, None, :]
        alpha = torch.where(live, alpha, torch.zeros((), device=dev))
        weight = t_before * alpha  # A x CHUNK x P
        if seen is not None:
            seen.index_add_(0, idx[gid].reshape(-1), weight.sum(dim=2).reshape(-1).to(seen.dtype))
        image[active] += torch.einsum("acp,acd->apd", weight, colour[gid])
        trans[active] = trans[active] * torch.prod(1 - alpha, dim=1)
        done[active] |= ends.any(dim=1)
    image = image.view(tiles_y, tiles_x, TILE, TILE, 3).permute(0, 2, 1, 3, 4).reshape(tiles_y * TILE, tiles_x * TILE, 3)
    return image[: cam.height, : cam.width]
