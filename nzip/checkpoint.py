"""nzip.save / nzip.load: state dicts in .nz containers, losslessly, with no pickle anywhere.

save() streams: tensors are encoded a window at a time (container.WINDOW_BYTES of raw
data) straight into the output, so peak extra memory is a few tensors' worth, not the
model's. The file appears under its name only when complete (temp file, fsync, rename):
a crash mid-save leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .dtypes import from_bytes, to_bytes
from .errors import NzipError
from .formats import container, tree


def save(state_dict: Mapping[str, Any], path: str | os.PathLike, codec="auto", threads: int = 0,
         metadata: Mapping[str, Any] | None = None, overwrite: bool = True,
         base: str | os.PathLike | None = None) -> dict:
    """Write a state dict losslessly; returns the container header.

    state_dict: {name: tensor or array}, or nested dicts/lists/tuples of tensors and plain
    int/float/bool/str/None values (an optimizer's state, a step counter). codec="auto"
    picks per tensor by dtype and a sample (nzip.codecs.auto); a name or config forces
    one codec for all. metadata: JSON-serialisable. base: an earlier checkpoint; tensors
    whose bytes are unchanged since then are stored as references to it (check with
    `nzip verify`; the base must stay where it is)."""
    tensors, layout = tree.flatten(state_dict)
    room = container.room_for(((n, tuple(t.shape)) for n, t in tensors.items()), layout, dict(metadata or {}))

    def items():
        for name, value in tensors.items():
            raw, dtype, shape, _ = to_bytes(value)
            yield container.Item(name, raw, dtype, shape, codec)

    return container.write(path, items(), metadata=dict(metadata or {}), threads=threads, overwrite=overwrite,
                           tree=layout, base=base, header_room=room)


def load(path: str | os.PathLike, device=None, keys=None, framework: str = "torch", threads: int = 0):
    """Read a checkpoint back: the state dict as it was saved (nested ones nested again);
    keys picks tensors by flat name and returns {name: tensor}. Also reads a packed model
    folder (nzip pack MODEL_DIR) and a DFloat11 project folder as their state dicts."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, device, keys, threads)
    with container.Container(path) as box:
        tensors = box.tensors(keys, device=device, framework=framework, threads=threads)
        layout = box.tree()
    if keys is not None or layout is None:
        return tensors
    return tree.unflatten(layout, tensors, as_array=_as_array if framework == "torch" else lambda a: a)


def _as_array(t):
    """A loaded torch tensor as the numpy array it was saved from (bf16 and fp8, which numpy
    lacks, as same-width unsigned integers, as nzip.decode gives them)."""
    raw, dtype, shape, _ = to_bytes(t)
    return from_bytes(raw, dtype, shape, "numpy")


def _load_folder(path: Path, device, keys, threads: int) -> dict:
    from .formats import dfloat11_checkpoint, model_folder

    if model_folder.is_packed(path) or any(path.glob("*.nz")):  # (no manifest: read_manifest says so)
        return model_folder.load_state_dict(path, device=device, keys=keys, threads=threads)
    if dfloat11_checkpoint.config_of(path) is not None:
        state = dfloat11_checkpoint.load_folder(path, device=device, threads=threads)
        return state if keys is None else {k: state[k] for k in keys}
    raise NzipError(f"{path} is a folder but neither a packed model folder (no {model_folder.MANIFEST}) "
                    "nor a DFloat11 checkpoint")


def open(path: str | os.PathLike) -> container.Container:  # noqa: A001  (mirrors safetensors.safe_open)
    """Open a .nz container lazily: keys(), metadata(), get_tensor(name)."""
    return container.Container(path)
