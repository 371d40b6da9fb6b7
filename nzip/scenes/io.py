"""read_scene / write_scene: a scene file by its suffix (.ply, .spz)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError
from .ply import read_ply, write_ply
from .scene import Scene
from .spz import read_spz, write_spz


def read_scene(path: str | os.PathLike) -> Scene:
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".spz":
        return read_spz(path)
    raise FormatError(f"{path}: unknown scene format {suffix!r} (.ply or .spz)")


def write_scene(scene: Scene, path: str | os.PathLike, overwrite: bool = True, **options) -> None:
    """options go to the format's writer (spz: version, fractional_bits)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return write_ply(scene, path, overwrite=overwrite)
    if suffix == ".spz":
        return write_spz(scene, path, overwrite=overwrite, **options)
    raise FormatError(f"{path}: unknown scene format {suffix!r} (.ply or .spz)")
