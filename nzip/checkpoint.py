"""save/load of state dicts into .nz containers (no pickle anywhere)."""

from __future__ import annotations

import os
from typing import Any, Mapping

from .codecs.auto import resolve
from .dtypes import to_bytes
from .errors import NzipError
from .formats import container


def save(state_dict: Mapping[str, Any], path: str | os.PathLike, codec="auto", threads: int = 0,
         metadata: Mapping[str, Any] | None = None, overwrite: bool = True) -> None:
    """Write a flat {name: tensor or array} dict losslessly. codec="auto" picks per tensor
    (tools/bench_weights.py measures the choice); metadata must be JSON-serialisable."""

    def items():
        for name, value in state_dict.items():
            if not isinstance(name, str):
                raise NzipError(f"state dict keys must be strings, got {name!r}")
            raw, dtype, shape, _ = to_bytes(value)
            yield container.Item(name, raw, dtype, shape, resolve(codec, dtype, raw.size))

    container.write(path, items(), metadata=dict(metadata or {}), threads=threads, overwrite=overwrite)


def load(path: str | os.PathLike, device=None, keys=None, framework: str = "torch", threads: int = 0) -> dict:
    """Read a container back into {name: tensor}; keys picks a subset. A folder written by
    the DFloat11 project (config.json with dfloat11_config) loads as its bf16 state dict."""
    if os.path.isdir(path):
        from .formats import dfloat11_checkpoint

        if dfloat11_checkpoint.config_of(path) is not None:
            state = dfloat11_checkpoint.load_folder(path, device=device, threads=threads)
            return state if keys is None else {k: state[k] for k in keys}
    with container.Container(path) as box:
        return box.tensors(keys, device=device, framework=framework, threads=threads)


def open(path: str | os.PathLike) -> container.Container:  # noqa: A001  (mirrors safetensors.safe_open)
    """Open a .nz container lazily: keys(), metadata(), get_tensor(name)."""
    return container.Container(path)
