"""How much of the renders each Gaussian makes: the codec's importance, seen from cameras.

alpha x size says how much a Gaussian could cover; a render says how much it does: one
inside an object or behind an opaque surface covers nothing, whatever its alpha and size.
`visibility` renders the original scene (nzip.scenes.render) from cameras around it and
sums each Gaussian's weight in the images: over every pixel, the transmittance in front of
it times its alpha. The scene codec can take its tiers from these weights (encode_scene's
`views`, `nzip pack --views N`; off by default). Measured at medium, bytes within 1%:
- guitar 63.5 -> 65.2 dB and biker 56.7 -> 58.3 dB from 12 views at 128 x 96 (65.9 and
  58.6 dB from 48 views at 256 x 192, on the H200);
- but the donut 49.7 -> 39.9 dB (4 judge views at 96 x 72): a fifth of its Gaussians are
  unseen by those 12 views and drop to the lowest tier, yet the judge's orbit sees them.
  Clipping the visibility factor to within 2 tiers of alpha x size still lost 0.9 dB there.
So it stays an option until the training views cover what any viewer may see.

The cameras are those codebook refinement trains on (refine.training_cameras), not the
orbit that `fidelity` judges by, so that a better score is not a fit to the judge's views.
"""

from __future__ import annotations

import numpy as np
import torch

from .render import SceneTensors, render
from .scene import Scene

VIEWS, SIZE = 12, (128, 96)


def visibility(scene: Scene, views: int = VIEWS, size: tuple[int, int] = SIZE, device="cpu") -> np.ndarray:
    """Each Gaussian's summed weight (transmittance x alpha, in pixels) in `views` renders
    of `size` (width, height): float64, one per Gaussian, 0 for one never seen."""
    from .refine import training_cameras

    seen = torch.zeros(len(scene), dtype=torch.float64, device=device)
    g = SceneTensors(scene, device)
    with torch.no_grad():
        for cam in training_cameras(scene, views, *size):
            render(g, cam, seen)
    return seen.cpu().numpy()


__all__ = ["SIZE", "VIEWS", "visibility"]
