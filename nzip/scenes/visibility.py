"""How much of the renders each Gaussian makes: the codec's importance, seen from cameras.

alpha x size says how much a Gaussian could cover; a render says how much it does: one
inside an object or behind an opaque surface covers nothing, whatever its alpha and size.
`visibility` renders the original scene (nzip.scenes.render) from cameras around it and
sums each Gaussian's weight in the images: over every pixel, the transmittance in front of
it times its alpha. The scene codec's tiers take these weights into account (encode_scene's `views`,
`nzip pack --views N`; by default 12 views at 128 x 96 up to AUTO_MAX Gaussians), each
Gaussian moved at most a tier from where alpha x size puts it (codec._seen_factor; the
compact level renders 24 views, lets a Gaussian go two tiers up, and leaves out those
whose weight is under 2e-4: biker's and guitar's hidden 5-10% at no visible cost, but on
the donut 8.4 dB, since the bench's orbit sees what these views barely do).
Measured at medium on the H200, bytes within 1%: the donut 53.9 -> 54.3 dB, guitar
64.0 -> 66.3 dB, biker 58.0 -> 60.2 dB. Unclipped, the Gaussians those 12 views miss (a
fifth of the donut's) fell to the lowest tier and the donut lost 14.5 dB.

The cameras are those codebook refinement trains on (refine.training_cameras), not the
orbit that `fidelity` judges by, so that a better score is not a fit to the judge's views.
"""

from __future__ import annotations

import numpy as np
import torch

from .refine import training_cameras
from .render import SceneTensors, render
from .scene import Scene

VIEWS, SIZE = 12, (128, 96)
# the most Gaussians encode_scene renders by default: 12 views of guitar's 91K take 16 s on
# 2 CPU cores, of a 1M scene 309 s
AUTO_MAX = 300_000


def visibility(scene: Scene, views: int = VIEWS, size: tuple[int, int] = SIZE, device="cpu") -> np.ndarray:
    """Each Gaussian's summed weight (transmittance x alpha, in pixels) in `views` renders
    of `size` (width, height): float64, one per Gaussian, 0 for one never seen."""
    seen = torch.zeros(len(scene), dtype=torch.float64, device=device)
    g = SceneTensors(scene, device)
    with torch.no_grad():
        for cam in training_cameras(scene, views, *size):
            render(g, cam, seen)
    return seen.cpu().numpy()


__all__ = ["AUTO_MAX", "SIZE", "VIEWS", "visibility"]
