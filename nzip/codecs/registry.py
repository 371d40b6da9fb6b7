"""The codec registry (modelled on numcodecs): Codec base class, register/get/available.

A codec turns the raw bytes of an array (plus its DType) into a payload and back. The
frame around the payload (dtype, shape, config, checksum) is added by `nzip.codecs.encode`,
so a codec's `encode` returns a self-describing frame and its `decode` needs nothing else.
Third-party codecs register through the entry-point group "nzip.codecs".
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from ..dtypes import DType
from ..errors import BadParameterError, UnknownCodecError, UnsupportedDtypeError
from ..parallel import cores

ENTRY_POINT_GROUP = "nzip.codecs"


def resolve_threads(threads: int | None) -> int:
    """threads=0 (or None) means every core this process may use; otherwise at least 1."""
    if threads is None or threads == 0:
        return cores()
    if not isinstance(threads, int) or threads < 0:
        raise BadParameterError(f"threads must be an int >= 0, got {threads!r}")
    return threads


class Codec:
    """Base class. Subclasses set `codec_id`, declare their parameters in `params`
    (name -> default) and implement encode_payload/decode_payload on raw bytes."""

    codec_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    # dtype names this codec accepts; None means any.
    dtypes: ClassVar[frozenset[str] | None] = None
    # the most decoded bytes one payload byte can legitimately become: decoders refuse
    # headers that promise more, before allocating anything
    max_expansion: ClassVar[int] = 1 << 17
    # whether decode_payload takes `out` (every built-in codec does)
    accepts_out: ClassVar[bool] = True
    # whether decode_payloads takes fresh=True and faults in fresh output itself
    faults_in_output: ClassVar[bool] = False
    # lossy codecs decode to an approximation: frames then carry no checksum of the input
    lossy: ClassVar[bool] = False
    # whether encode_payload needs the array's shape (images: shape=(H, W, 3))
    takes_shape: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.params)
        if unknown:
            raise BadParameterError(
                f"codec {self.codec_id!r} has no parameter {sorted(unknown)[0]!r}; "
                f"it takes {sorted(self.params) or 'none'}"
            )
        for name, default in self.params.items():
            setattr(self, name, params.get(name, default))
        self.validate()

    def validate(self) -> None:
        """Raise BadParameterError for parameters out of range."""

    def _check_int(self, name: str, lo: int, hi: int) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise BadParameterError(f"{self.codec_id}: {name} must be an int in [{lo}, {hi}], got {v!r}")

    # -- config -----------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, **{k: getattr(self, k) for k in self.params}}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Codec":
        cfg = dict(config)
        cfg.pop("id", None)
        return cls(**cfg)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(json.dumps(self.get_config(), sort_keys=True))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.params)
        return f"{type(self).__name__}({args})"

    # -- whole objects (frames) ----------------------------------------------------------
    def encode(self, obj, threads: int = 0) -> bytes:
        """Encode a numpy array or torch tensor into a self-describing frame."""
        from .api import encode_with

        return encode_with(self, obj, threads=threads)

    def decode(self, frame, device=None, threads: int = 0):
        """Decode a frame written by this codec (any frame, in fact: the frame names its codec)."""
        from .api import decode

        return decode(frame, device=device, threads=threads)

    # -- raw bytes: what subclasses implement ---------------------------------------------
    def check_dtype(self, dtype: DType) -> None:
        if self.dtypes is not None and dtype.name not in self.dtypes:
            raise UnsupportedDtypeError(
                f"codec {self.codec_id!r} does not support dtype {dtype.name}; "
                f"it takes {', '.join(sorted(self.dtypes))}"
            )

    def encode_payload(self, data: np.ndarray, dtype: DType, threads: int) -> "bytes | list":
        """data: flat uint8 array of n * dtype.itemsize bytes. Returns the payload: bytes,
        or a list of bytes-like parts to be concatenated (saves copying large payloads)."""
        raise NotImplementedError

    def decode_payload(self, payload: memoryview, dtype: DType, count: int, threads: int,
                       out: np.ndarray | None = None) -> np.ndarray:
        """Return a flat uint8 array of count * dtype.itemsize bytes: `out` when given (a
        preallocated buffer of that size to decode into), else a new one. Must raise
        CorruptDataError (never allocate absurdly, never read out of bounds) on bad input.
        Third-party codecs may omit `out` (set accepts_out = False); nzip then copies."""
        raise NotImplementedError


    def decode_payloads(self, jobs: list, threads: int) -> None:
        """Decode many payloads of this codec: jobs are (payload, dtype, count, out) with out
        preallocated. The default spreads decode_payload calls over threads; codecs with a
        compiled batch path override it. A codec with faults_in_output set also takes
        fresh=True: the outs are fresh memory, its to fault in (see nzip.codecs.scratch)."""
        from ..parallel import pmap_balanced

        pmap_balanced(lambda job, th: self.decode_into(*job[:3], th, job[3]), jobs, threads, cost=lambda j: len(j[0]))

    def to_device(self, payload: memoryview, dtype: DType, count: int, device):
        """A GPU-resident form of the payload that `decode_on_device` decodes, or None when
        this codec has no GPU decoder (then nzip decodes on the CPU and copies)."""
        return None

    def decode_on_device(self, resident_list: list, outs: list | None = None, check: bool = True) -> list:
        """Decode GPU-resident payloads (from to_device) in one batch: flat tensors."""
        raise NotImplementedError

    def decode_into(self, payload: memoryview, dtype: DType, count: int, threads: int, out: np.ndarray) -> np.ndarray:
        """decode_payload into a preallocated buffer, copying for codecs without `out`."""
        if self.accepts_out:
            return self.decode_payload(payload, dtype, count, threads, out=out)
        out[:] = self.decode_payload(payload, dtype, count, threads)
        return out


_registry: dict[str, type[Codec]] = {}
_instances: dict[str, "Codec"] = {}
_entry_points_loaded = False


def register(cls: type[Codec], replace: bool = False) -> type[Codec]:
    """Register a Codec subclass under its codec_id (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Codec)) or not cls.codec_id:
        raise BadParameterError("register() takes a Codec subclass with a codec_id")
    if cls.codec_id in _registry and _registry[cls.codec_id] is not cls and not replace:
        raise BadParameterError(f"a codec {cls.codec_id!r} is already registered")
    _registry[cls.codec_id] = cls
    _instances.clear()
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _registry:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break nzip
            import warnings

            warnings.warn(f"nzip: cannot load codec entry point {ep.name!r}: {exc}")
            continue
        register(cls)


def available() -> list[str]:
    """Names of every registered codec, including entry-point plugins."""
    _load_entry_points()
    return sorted(_registry)


def get(name_or_config: str | dict[str, Any] | Codec, **params: Any) -> Codec:
    """A codec instance from a name (plus parameters), a config dict, or an instance.
    Instances are immutable and cached by config: decoding many frames builds each once."""
    if isinstance(name_or_config, Codec):
        return name_or_config
    key = _cache_key(name_or_config, params)
    if key is not None and key in _instances:
        return _instances[key]
    codec = _get(name_or_config, **params)
    if key is not None and len(_instances) < 1024:
        _instances[key] = codec
    return codec


def _cache_key(name_or_config, params: dict):
    """A hashable key for a flat config (what frames hold); None for anything else."""
    items = {**name_or_config, **params} if isinstance(name_or_config, dict) else {"id": name_or_config, **params}
    try:
        key = tuple(sorted((k, type(v).__name__, v) for k, v in items.items()))  # True is not 1 here
        hash(key)
        return key
    except TypeError:  # nested or unhashable values: built every time
        return None


def _get(name_or_config: str | dict[str, Any], **params: Any) -> Codec:
    if isinstance(name_or_config, dict):
        config = {**name_or_config, **params}
        name = config.get("id")
    else:
        name, config = name_or_config, {"id": name_or_config, **params}
    if not isinstance(name, str):
        raise UnknownCodecError(f"codec name must be a string, got {name!r}")
    if name not in _registry:
        _load_entry_points()
    if name not in _registry:
        raise UnknownCodecError(f"unknown codec {name!r}; available: {', '.join(available())}")
    return _registry[name].from_config(config)
