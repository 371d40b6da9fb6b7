"""Nested state dicts as flat tensors plus a JSON tree: what nzip.save stores instead of a pickle.

A training checkpoint is rarely flat: {"model": {...}, "optimizer": {"state": {0: {...}},
"param_groups": [...]}, "step": 1200}. flatten() gives every tensor a flat name (its path
joined by dots) and describes the rest as JSON:

    {"tensor": flat name}            a torch tensor
    {"array": flat name}             a numpy array (comes back as one)
    {"value": v}                     int, float, bool, str or None
    {"dict": [[key, node], ...]}     keys str or int, order kept
    {"list": [node, ...]}, {"tuple": [node, ...]}

A flat {str: tensor} dict needs no tree (None), so plain state dicts stay plain.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..dtypes import is_torch
from ..errors import FormatError, NzipError

MAX_DEPTH = 64
SCALARS = (bool, int, float, str, type(None))


def is_tensor(obj) -> bool:
    return is_torch(obj) or isinstance(obj, np.ndarray)


def flatten(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict | None]:
    """({flat name: tensor}, tree or None)."""
    if not isinstance(state, Mapping):
        raise NzipError(f"expected a dict of tensors, got {type(state).__name__}")
    if all(isinstance(k, str) and is_tensor(v) for k, v in state.items()):
        return dict(state), None
    tensors: dict[str, Any] = {}

    def name_for(path: list) -> str:
        base = ".".join(str(p) for p in path) or "tensor"
        name, n = base, 1
        while name in tensors:  # {"a.b": x, "a": {"b": y}}: both would be "a.b"
            name, n = f"{base}#{n}", n + 1
        return name

    def walk(obj, path: list, depth: int) -> dict:
        if depth > MAX_DEPTH:
            raise NzipError(f"state dict nested deeper than {MAX_DEPTH} levels (a cycle?)")
        if is_tensor(obj):
            name = name_for(path)
            tensors[name] = obj
            return {"array" if isinstance(obj, np.ndarray) else "tensor": name}
        if isinstance(obj, SCALARS):
            return {"value": obj}
        if isinstance(obj, Mapping):
            for k in obj:
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise NzipError(f"state dict key {k!r} at {'.'.join(map(str, path)) or 'top level'}: "
                                    "only str and int keys can be stored")
            return {"dict": [[k, walk(v, path + [k], depth + 1)] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            kind = "list" if isinstance(obj, list) else "tuple"
            return {kind: [walk(v, path + [i], depth + 1) for i, v in enumerate(obj)]}
        where = ".".join(map(str, path)) or "top level"
        raise NzipError(f"cannot store {type(obj).__name__} at {where}: nzip stores tensors, arrays and "
                        "int/float/bool/str/None in nested dicts, lists and tuples (no pickle)")

    return tensors, walk(state, [], 0)


def unflatten(tree: dict, tensors: Mapping[str, Any], as_array=lambda t: t) -> Any:
    """Rebuild the nested object (as_array turns a loaded tensor into the numpy array it
    was saved from); a malformed tree is a FormatError."""

    def build(node, depth: int):
        if depth > MAX_DEPTH or not isinstance(node, dict) or len(node) != 1:
            raise FormatError("malformed state dict tree in the container header")
        (kind, body), = node.items()
        if kind in ("tensor", "array"):
            if not isinstance(body, str) or body not in tensors:
                raise FormatError(f"state dict tree names a missing tensor {body!r}")
            return tensors[body] if kind == "tensor" else as_array(tensors[body])
        if kind == "value":
            if not isinstance(body, SCALARS):
                raise FormatError("malformed value in the state dict tree")
            return body
        if kind == "dict" and isinstance(body, list):
            if not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (str, int)) for kv in body):
                raise FormatError("malformed dict in the state dict tree")
            return {k: build(v, depth + 1) for k, v in body}
        if kind in ("list", "tuple") and isinstance(body, list):
            items = [build(v, depth + 1) for v in body]
            return items if kind == "list" else tuple(items)
        raise FormatError(f"unknown node {kind!r} in the state dict tree")

    return build(tree, 0)
