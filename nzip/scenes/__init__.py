"""3D Gaussian-splat scenes: reading and writing .ply (INRIA layout) and Niantic's .spz.

    from nzip.scenes import read_scene, write_scene
    scene = read_scene("point_cloud.ply")       # or .spz (versions 2, 3, 4)
    write_scene(scene, "scene.spz")             # any of the two, by suffix

Beside them: the scene codec (`codec`: encode_scene / decode_scene, `nzip pack scene.ply`),
its quantisers (`quantize`), the reference renderer (`render`) and the fidelity measure
(`fidelity`, `nzip scene-eval`).
"""

from .io import read_scene, write_scene
from .scene import Scene

__all__ = ["Scene", "read_scene", "write_scene"]
