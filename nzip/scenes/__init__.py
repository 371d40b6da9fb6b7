"""3D Gaussian-splat scenes: reading and writing .ply (INRIA layout) and Niantic's .spz.

    from nzip.scenes import read_scene, write_scene
    scene = read_scene("point_cloud.ply")       # or .spz (versions 2, 3, 4)
    write_scene(scene, "scene.spz")             # any of the two, by suffix

The scene codec itself (residual vector quantization, `nzip pack scene.ply`) and the
reference renderer are the next steps of issue 5; this package holds what they stand on.
"""

from .io import read_scene, write_scene
from .scene import Scene

__all__ = ["Scene", "read_scene", "write_scene"]
