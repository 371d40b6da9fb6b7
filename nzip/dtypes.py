"""Element types nzip understands, independent of numpy and torch.

Codecs only ever see raw little-endian bytes plus a `DType`; this module converts between
that view and numpy arrays / torch tensors (torch is imported only when a tensor is used).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedDtypeError


@dataclass(frozen=True)
class DType:
    name: str  # torch-style name: "bfloat16", "float32", "int8", "bool", ...
    itemsize: int
    kind: str  # "f" float, "i" signed, "u" unsigned, "b" bool, "c" complex, "V" opaque bytes

    @property
    def is_float(self) -> bool:
        return self.kind in "fc"


_TABLE = [
    DType("bfloat16", 2, "f"),
    DType("float16", 2, "f"),
    DType("float32", 4, "f"),
    DType("float64", 8, "f"),
    DType("float8_e4m3fn", 1, "f"),
    DType("float8_e5m2", 1, "f"),
    DType("complex64", 8, "c"),
    DType("complex128", 16, "c"),
    DType("int8", 1, "i"),
    DType("int16", 2, "i"),
    DType("int32", 4, "i"),
    DType("int64", 8, "i"),
    DType("uint8", 1, "u"),
    DType("uint16", 2, "u"),
    DType("uint32", 4, "u"),
    DType("uint64", 8, "u"),
    DType("bool", 1, "b"),
]
DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}

# numpy has no bf16/fp8: such tensors travel as uint views of the same width.
_NUMPY_NAMES = {"float16", "float32", "float64", "complex64", "complex128", "int8", "int16",
                "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}
_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def dtype_from_name(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise UnsupportedDtypeError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None


def is_torch(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def to_bytes(obj) -> tuple[np.ndarray, DType, tuple[int, ...], str]:
    """Return (flat uint8 view of the little-endian element bytes, dtype, shape, kind).

    kind is "torch" or "numpy". Non-contiguous inputs are copied once; contiguous ones are
    not copied at all.
    """
    if is_torch(obj):
        import torch

        if obj.is_sparse or obj.layout != torch.strided:
            raise UnsupportedDtypeError("sparse tensors are not supported; call .to_dense() first")
        name = str(obj.dtype).removeprefix("torch.")
        dtype = dtype_from_name(name)
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        shape = tuple(t.shape)
        if t.numel() == 0:
            return np.zeros(0, np.uint8), dtype, shape, "torch"
        flat = t.reshape(-1)
        if dtype.kind == "b":
            arr = flat.view(torch.uint8).numpy()
        elif dtype.kind == "c":
            arr = torch.view_as_real(flat).reshape(-1).view(torch.uint8).numpy()
        else:
            arr = flat.view(torch.uint8).numpy()
        return arr.reshape(-1), dtype, shape, "torch"
    if isinstance(obj, np.ndarray) or np.isscalar(obj):
        a = np.asarray(obj)
        if a.dtype.name not in _NUMPY_NAMES:
            raise UnsupportedDtypeError(f"numpy dtype {a.dtype} is not supported")
        dtype = DTYPES[a.dtype.name]
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        shape = tuple(a.shape)  # before ascontiguousarray, which turns 0-d into 1-d
        a = np.ascontiguousarray(a)
        return a.reshape(-1).view(np.uint8), dtype, shape, "numpy"
    raise UnsupportedDtypeError(f"cannot encode {type(obj).__name__}: expected a numpy array or torch tensor")


def from_bytes(raw: np.ndarray, dtype: DType, shape: tuple[int, ...], kind: str, device=None):
    """Inverse of to_bytes: raw is a flat uint8 array of len prod(shape) * itemsize (owned)."""
    if kind == "torch":
        import torch

        tdtype = getattr(torch, dtype.name)
        if raw.size == 0:
            t = torch.empty(shape, dtype=tdtype)
        else:
            t = torch.from_numpy(raw).view(tdtype).reshape(shape)
        return t if device is None else t.to(device)
    if kind != "numpy":
        raise UnsupportedDtypeError(f"unknown array kind {kind!r}")
    if dtype.name in _NUMPY_NAMES:
        return raw.view(np.dtype(dtype.name)).reshape(shape)
    return raw.view(_UINT_OF_SIZE[dtype.itemsize]).reshape(shape)


def float32_values(data: np.ndarray, dtype: DType) -> np.ndarray:
    """The values of raw float32, float16 or bfloat16 bytes, as a new float32 array (what
    lossy codecs compute on)."""
    if dtype.name == "float32":
        return data.view(np.float32).astype(np.float32)
    if dtype.name == "float16":
        return data.view(np.float16).astype(np.float32)
    # bfloat16: the high half of a float32
    return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bytes(x: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 values as the raw bytes of float32, float16 or bfloat16 (rounded to nearest
    even; NaN stays NaN)."""
    if dtype.name == "float32":
        return x.astype(np.float32).view(np.uint8)
    if dtype.name == "float16":
        return x.astype(np.float16).view(np.uint8)
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
    nan = np.isnan(x)
    rounded[nan] = 0x7FC0
    return rounded.astype(np.uint16).view(np.uint8)
