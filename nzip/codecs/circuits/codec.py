"""The lossless codec `pc`: samples entropy-coded with the conditionals of an HCLT.

    blob = codecs.encode(digits, "pc")                    # n x 28 x 28 uint8, shipped MNIST model
    blob = codecs.encode(x, "pc", model="model.nzpc")     # any trained model (path or object)
    same = codecs.decode(blob)

Input: uint8 or uint16 arrays of shape (n, *data_shape), (n, D) or one sample
(*data_shape), values in the model's value range. The whole batch is one range-coded
stream (constriction's RangeEncoder); the conditionals come from conditionals.Walk, in
chunks of CHUNK samples.

Payload:
    offset  size  field
    0       4     magic b"NZP\\x01" (the payload layout's version in the last byte)
    4       8     identity of the model (XXH3-64 of its .nzpc file)
    12      8     number of samples n, u64 LE
    20      ...   range coder words, u32 LE
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np

from ...dtypes import DType
from ...errors import BadParameterError, CorruptDataError, NzipError
from ..registry import Codec, register
from . import model_file
from .quantized import QuantizedHCLT

MAGIC = b"NZP\x01"
CHUNK = 4096  # samples walked at once: bounds memory; part of the layout (decode mirrors it)
SHIPPED = {"mnist": Path(__file__).with_name("models") / "mnist.nzpc"}
_loaded: dict[str, QuantizedHCLT] = {}  # identity hex -> model, for decoding
_by_path: dict[tuple, QuantizedHCLT] = {}
_walks: dict[bytes, object] = {}
_lock = threading.Lock()


def load_model(path: str | os.PathLike) -> QuantizedHCLT:
    """Read a .nzpc model (cached) and make it known for decoding frames that name it."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise BadParameterError(f"pc: cannot read model {str(path)!r}: {e.strerror}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _lock:
        if key not in _by_path:
            _by_path[key] = remember(model_file.load(path))
        return _by_path[key]


def remember(model: QuantizedHCLT) -> QuantizedHCLT:
    """Make an in-memory model known for decoding (its identity is that of its file)."""
    if not model.identity:
        model.identity = model_file.dumps(model)[-8:]
    _loaded[model.identity.hex()] = model
    return model


def resolve(spec) -> QuantizedHCLT:
    if isinstance(spec, QuantizedHCLT):
        return remember(spec)
    if spec in SHIPPED:
        return load_model(SHIPPED[spec])
    if isinstance(spec, str) and spec.startswith("xxh3:"):
        if spec[5:] in _loaded:
            return _loaded[spec[5:]]
        raise BadParameterError(f"pc: model {spec} is not loaded in this process; "
                                f"load it first with nzip.codecs.circuits.load_model(path)")
    return load_model(spec)


def walk_for(model: QuantizedHCLT):
    """The model's tables on the CPU as float64 tensors, built once per model."""
    from .conditionals import Walk

    with _lock:
        walk = _walks.get(model.identity)
        if walk is None:
            walk = _walks[model.identity] = Walk(model)
        return walk


@register
class PC(Codec):
    """Lossless coding with a hidden Chow-Liu tree probabilistic circuit."""

    codec_id = "pc"
    params = {"model": "mnist"}
    dtypes = frozenset({"uint8", "uint16"})
    takes_shape = True
    max_expansion = 1 << 24  # an all-background image costs almost nothing

    def validate(self) -> None:
        # frames name a model by a string: a shipped name, a path, or an in-memory model's
        # identity; the model itself is read when coding (decode trusts the identity first)
        if isinstance(self.model, QuantizedHCLT):
            self.model = "xxh3:" + remember(self.model).identity.hex()
        elif isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        elif not isinstance(self.model, str) or not self.model:
            raise BadParameterError(f"pc: model must be {' or '.join(map(repr, SHIPPED))}, a .nzpc path or a "
                                    f"model object, got {self.model!r}")

    def _model(self) -> QuantizedHCLT:
        return resolve(self.model)

    def _samples(self, model: QuantizedHCLT, shape: tuple) -> int:
        d, ds = model.num_vars, tuple(model.data_shape)
        if tuple(shape) == ds:
            return 1
        if len(shape) > len(ds) and tuple(shape[-len(ds):]) == ds:
            return int(np.prod(shape[:-len(ds)]))
        if len(shape) == 2 and shape[1] == d:
            return shape[0]
        raise BadParameterError(f"pc: the model codes samples of shape {ds} (or {d} values); got an array of shape "
                                f"{tuple(shape)}: give (n, {', '.join(map(str, ds))}), (n, {d}) or one sample")

    def encode_payload(self, data: np.ndarray, dtype: DType, threads: int, shape: tuple = ()) -> bytes:
        import constriction
        import torch

        model = self._model()
        n = self._samples(model, shape)
        lo, hi = model.value_range
        x = data.view(np.dtype(dtype.name)).reshape(n, model.num_vars).astype(np.int64) - lo
        if x.size and (x.min() < 0 or x.max() > hi - lo):
            raise BadParameterError(f"pc: values must lie in the model's range {lo}..{hi}; "
                                    f"got {x.min() + lo}..{x.max() + lo}")
        encoder = constriction.stream.queue.RangeEncoder()
        family = constriction.stream.model.Categorical(perfect=False)
        walk = walk_for(model)
        for start in range(0, n, CHUNK):
            chunk = torch.from_numpy(x[start:start + CHUNK])

            def pick(i, probs, chunk=chunk):
                symbols = chunk[:, i]
                encoder.encode(symbols.numpy().astype(np.int32), family, probs.numpy())
                return symbols

            walk.run(len(chunk), pick)
        words = encoder.get_compressed().astype("<u4")
        return MAGIC + model.identity + struct.pack("<Q", n) + words.tobytes()

    def decode_payload(self, payload: memoryview, dtype: DType, count: int, threads: int,
                       out: np.ndarray | None = None) -> np.ndarray:
        import constriction
        import torch

        payload = bytes(payload)
        if len(payload) < 20 or payload[:4] != MAGIC:
            raise CorruptDataError("pc: not a pc payload (wrong magic or layout version)")
        identity, (n,) = payload[4:12], struct.unpack_from("<Q", payload, 12)
        model = _loaded.get(identity.hex())
        if model is None:
            model = self._model()
            if model.identity != identity:
                raise CorruptDataError(f"pc: the frame was coded with model xxh3:{identity.hex()}, not with "
                                       f"{self.model!r} (xxh3:{model.identity.hex()}); load that model with "
                                       f"nzip.codecs.circuits.load_model(path)")
        if n * model.num_vars != count or (len(payload) - 20) % 4:
            raise CorruptDataError(f"pc: payload for {n} samples of {model.num_vars} values does not match "
                                   f"the frame's {count} values")
        words = np.frombuffer(payload, "<u4", offset=20).astype(np.uint32)
        decoder = constriction.stream.queue.RangeDecoder(words)
        family = constriction.stream.model.Categorical(perfect=False)
        walk = walk_for(model)
        raw = out if out is not None else np.empty(count * dtype.itemsize, np.uint8)
        values = raw.view(np.dtype(dtype.name)).reshape(n, model.num_vars)
        try:
            for start in range(0, n, CHUNK):
                rows = np.empty((min(CHUNK, n - start), model.num_vars), np.int64)

                def pick(i, probs, rows=rows):
                    rows[:, i] = decoder.decode(family, probs.numpy())
                    return torch.from_numpy(rows[:, i])

                walk.run(len(rows), pick)
                values[start:start + len(rows)] = rows + model.value_range[0]
        except NzipError:
            raise
        except Exception as e:  # constriction reports a stream that runs out or is invalid
            raise CorruptDataError(f"pc: corrupt stream ({e})") from None
        return raw
