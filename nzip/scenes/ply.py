""".ply files of 3D Gaussian splats in the INRIA layout, read and written with numpy.

    x y z [nx ny nz] f_dc_0..2 [f_rest_0..3K-1] opacity scale_0..2 rot_0..3 [anything else]

binary_little_endian only (what every 3DGS trainer writes); one `vertex` element of scalar
properties. Properties beyond the layout are kept (Scene.extra) and written back. A
compressed .ply (PlayCanvas/SuperSplat: a `chunk` element and packed integers) is refused
with a clear message. numpy reads a structured view of the whole body at once, which is
faster than open3d's tensor reader for these files and needs no system library.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import FormatError, TruncatedError
from ..formats.atomic import atomic_write
from .scene import SH_COEFFS, Scene

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}
NAMES = {np.dtype(v).str: k for k, v in reversed(list(PLY_TYPES.items()))}
MAX_HEADER = 1 << 20
REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]


def _header(buf: bytes) -> tuple[int, int, list[tuple[str, str]]]:
    """(body offset, vertex count, [(property, numpy dtype)])."""
    end = buf.find(b"end_header\n", 0, MAX_HEADER)
    if not buf.startswith(b"ply\n") or end < 0:
        raise FormatError("not a .ply file (no 'ply' magic or no end_header)")
    lines = buf[:end].decode("ascii", "replace").splitlines()[1:]
    fmt, elements, current = None, [], None
    for line in lines:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else None
        elif words[0] == "element" and len(words) == 3:
            current = (words[1], int(words[2]), [])
            elements.append(current)
        elif words[0] == "property" and current is not None:
            if words[1] == "list":
                raise FormatError(f"ply property {words[-1]!r} is a list: not a Gaussian-splat .ply")
            if words[1] not in PLY_TYPES or len(words) != 3:
                raise FormatError(f"ply property line {line!r} has an unknown type")
            current[2].append((words[2], PLY_TYPES[words[1]]))
        else:
            raise FormatError(f"ply header line {line!r} is not understood")
    if fmt != "binary_little_endian":
        raise FormatError(f"ply format {fmt!r}: only binary_little_endian is read (what 3DGS trainers write)")
    names = [e[0] for e in elements]
    if "chunk" in names:
        raise FormatError("a compressed .ply (PlayCanvas/SuperSplat: packed chunks) is not read; "
                          "decompress it to the INRIA layout first")
    if names != ["vertex"]:
        raise FormatError(f"ply elements {names}: expected one 'vertex' element")
    _, count, props = elements[0]
    if count < 0:
        raise FormatError("ply vertex count is negative")
    return end + len(b"end_header\n"), count, props


def read_ply(path: str | os.PathLike) -> Scene:
    with open(path, "rb") as f:
        buf = f.read()
    start, count, props = _header(buf)
    dtype = np.dtype(props)
    if len({p for p, _ in props}) != len(props):
        raise FormatError("ply has a property listed twice")
    missing = [p for p in REQUIRED if p not in dtype.names]
    if missing:
        raise FormatError(f"ply lacks the Gaussian-splat properties {missing}")
    if count == 0:
        raise FormatError("ply holds no Gaussians")
    need = start + count * dtype.itemsize
    if len(buf) < need:
        raise TruncatedError(f"ply truncated: {count} Gaussians need {need} bytes, the file has {len(buf)}")
    v = np.frombuffer(buf, dtype, count, start)
    rest = sorted((p for p in dtype.names if re.fullmatch(r"f_rest_\d+", p)), key=lambda p: int(p[7:]))
    if rest != [f"f_rest_{i}" for i in range(len(rest))] or len(rest) // 3 not in SH_COEFFS.values() or len(rest) % 3:
        raise FormatError(f"ply has {len(rest)} f_rest properties: not an SH degree 0-3 layout")
    k = len(rest) // 3

    def stack(names):
        return np.stack([v[n].astype(np.float32) for n in names], axis=-1)

    used = set(REQUIRED) | set(rest) | {"nx", "ny", "nz"}
    sh_rest = stack(rest).reshape(count, 3, k).transpose(0, 2, 1) if k else np.zeros((count, 0, 3), np.float32)
    return Scene(
        positions=stack(["x", "y", "z"]), sh_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
        sh_rest=np.ascontiguousarray(sh_rest), opacity=v["opacity"].astype(np.float32),
        scales=stack(["scale_0", "scale_1", "scale_2"]), rotations=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        normals=stack(["nx", "ny", "nz"]) if {"nx", "ny", "nz"} <= set(dtype.names) else None,
        extra={p: v[p].copy() for p in dtype.names if p not in used},
    )


def write_ply(scene: Scene, path: str | os.PathLike, overwrite: bool = True) -> None:
    """The INRIA layout (the property order every 3DGS viewer expects), atomically."""
    n, k = len(scene), scene.sh_rest.shape[1]
    columns: list[tuple[str, np.ndarray]] = [(c, scene.positions[:, i]) for i, c in enumerate("xyz")]
    if scene.normals is not None:
        columns += [(c, scene.normals[:, i]) for i, c in enumerate(("nx", "ny", "nz"))]
    columns += [(f"f_dc_{i}", scene.sh_dc[:, i]) for i in range(3)]
    flat_rest = scene.sh_rest.transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, as the .ply has it
    columns += [(f"f_rest_{i}", flat_rest[:, i]) for i in range(3 * k)]
    columns += [("opacity", scene.opacity)]
    columns += [(f"scale_{i}", scene.scales[:, i]) for i in range(3)]
    columns += [(f"rot_{i}", scene.rotations[:, i]) for i in range(4)]
    columns += list(scene.extra.items())
    dtype = np.dtype([(name, "<f4" if name not in scene.extra else np.asarray(col).dtype.newbyteorder("<"))
                      for name, col in columns])
    body = np.empty(n, dtype)
    for name, col in columns:
        body[name] = col
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {NAMES[dtype[name].str if dtype[name].str in NAMES else np.dtype(dtype[name]).str]} {name}"
               for name in dtype.names]
    with atomic_write(path, overwrite) as f:
        f.write(("\n".join(header) + "\nend_header\n").encode("ascii"))
        f.write(body.tobytes())
