"""A 3D Gaussian-splat scene in the INRIA (graphdeco) convention, as numpy arrays.

Attributes are stored as trained, not activated: log scales, opacity logits, quaternions
(w, x, y, z; not necessarily normalised) and spherical-harmonic coefficients with the DC
term apart (`sh_dc`, N x 3) and the rest as N x K x 3 (K = (degree + 1)^2 - 1 per colour;
the .ply stores them channel-major, f_rest[c * K + k]). Coordinates are those of the .ply
(right, down, forward for COLMAP scenes); .spz conversion flips to its right-up-back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError

SH_COEFFS = {0: 0, 1: 3, 2: 8, 3: 15}  # per colour channel, DC excluded


def sh_degree_of(k: int) -> int:
    for degree, count in SH_COEFFS.items():
        if count == k:
            return degree
    raise FormatError(f"{k} higher-order SH coefficients per channel is no SH degree (0, 3, 8 or 15 expected)")


def alpha_of(opacity: np.ndarray) -> np.ndarray:
    """Opacity logits as alpha in (0, 1), float64."""
    return 1 / (1 + np.exp(-opacity.astype(np.float64)))


@dataclass
class Scene:
    positions: np.ndarray  # N x 3 float32
    sh_dc: np.ndarray  # N x 3
    sh_rest: np.ndarray  # N x K x 3
    opacity: np.ndarray  # N, logits
    scales: np.ndarray  # N x 3, log
    rotations: np.ndarray  # N x 4, (w, x, y, z)
    normals: np.ndarray | None = None  # N x 3, when the file had them (3DGS writes zeros)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other per-Gaussian properties, kept
    antialiased: bool = False  # trained with Mip-Splatting's 3D filter (the .spz flag)

    def __post_init__(self) -> None:
        n = self.positions.shape[0]
        shapes = {"positions": (n, 3), "sh_dc": (n, 3), "opacity": (n,), "scales": (n, 3), "rotations": (n, 4)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise FormatError(f"scene {name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.sh_rest.ndim != 3 or self.sh_rest.shape[0] != n or self.sh_rest.shape[2] != 3:
            raise FormatError(f"scene sh_rest has shape {self.sh_rest.shape}, expected ({n}, K, 3)")
        sh_degree_of(self.sh_rest.shape[1])

    def __len__(self) -> int:
        return self.positions.shape[0]

    def subset(self, rows) -> "Scene":
        """The Gaussians at `rows` (indices or a mask), every attribute alike."""
        return Scene(positions=self.positions[rows], sh_dc=self.sh_dc[rows], sh_rest=self.sh_rest[rows],
                     opacity=self.opacity[rows], scales=self.scales[rows], rotations=self.rotations[rows],
                     normals=None if self.normals is None else self.normals[rows],
                     extra={k: v[rows] for k, v in self.extra.items()}, antialiased=self.antialiased)

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.sh_rest.shape[1])

    def check_finite(self) -> None:
        """Every attribute a number (NaN or inf in a trained scene means a broken file)."""
        for name in ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations"):
            bad = ~np.isfinite(getattr(self, name))
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise FormatError(f"scene attribute {name} is not finite (first at Gaussian {row})")
