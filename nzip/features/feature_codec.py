"""`feature-hyperprior`: lossy codec for float feature tensors of large models.

    blob = codecs.encode(hidden_states, "feature-hyperprior", quality=3)   # 1 .. 6
    approx = codecs.decode(blob)                                           # same dtype, shape

The pipeline of 'Feature Coding in the Era of Large Models' (FCM-LM): values truncated to
a fixed range (the model's, from its training features), scaled to [0, 1], packed into one
2-D frame, and coded by a one-channel scale hyperprior (bmshj2018-hyperprior, N=128,
M=192) trained with lambda * 255^2 * MSE + rate; rate is reported in bits per feature
point (payload bits / number of values). Packing: a token sequence (..., T, D) is its
rows x D matrix; a feature map (N, C, H, W) is a mosaic, each map's C channels tiled on a
grid of ceil(sqrt(C)) columns, the N mosaics stacked. The coded frame is padded (edges
repeated) to a multiple of 64 and cropped back on decode.

Payload: the learned codecs' common header (nzip.features.image_models: magic
b"NZF\\x01", the weights' identity, frame and hyper-latent sizes, length Z of the
hyper-latent stream), then u8 number of dimensions and u64 each (the tensor's shape, for
unpacking), Z bytes of hyper-latent stream, then the latent stream.
"""

from __future__ import annotations

import math
import struct
from typing import ClassVar

import numpy as np

from ..codecs.registry import Codec, register
from ..dtypes import DType, float32_to_bytes, float32_values
from ..errors import BadParameterError, CorruptDataError
from . import image_models

MAGIC = b"NZF\x01"
WEIGHTS = "feature-hyperprior"
ARCH = "bmshj2018-hyperprior"
MAX_SIDE = 1 << 16


def truncation_range(x) -> tuple[float, float]:
    """The training features' range, from the 0.0005% / 99.9995% quantiles, rounded out
    to halves: what the codec keeps (values outside it are clipped)."""
    lo, hi = np.percentile(np.asarray(x, np.float32), [0.0005, 99.9995])
    return math.floor(lo * 2) / 2, math.ceil(hi * 2) / 2


def to_unit(x, lo: float, hi: float):
    return (x.clamp(lo, hi) - lo) / (hi - lo)


def _grid(channels: int) -> tuple[int, int]:
    """(rows, columns) of the mosaic of `channels` maps."""
    cols = math.ceil(math.sqrt(channels))
    return math.ceil(channels / cols), cols


def frame_shape(shape: tuple) -> tuple[int, int]:
    """(height, width) of the 2-D frame a tensor of this shape packs into."""
    if len(shape) == 4:
        n, c, h, w = shape
        rows, cols = _grid(c)
        return n * rows * h, cols * w
    return math.prod(shape[:-1]), shape[-1]


def pack(x: np.ndarray, shape: tuple) -> np.ndarray:
    """The 2-D frame of a feature tensor (module docstring)."""
    if len(shape) == 4:
        n, c, h, w = shape
        rows, cols = _grid(c)
        maps = np.zeros((n, rows * cols, h, w), np.float32)
        maps[:, :c] = x.reshape(shape)
        return maps.reshape(n, rows, cols, h, w).transpose(0, 1, 3, 2, 4).reshape(frame_shape(shape))
    return x.reshape(frame_shape(shape))


def unpack(frame: np.ndarray, shape: tuple) -> np.ndarray:
    if len(shape) == 4:
        n, c, h, w = shape
        rows, cols = _grid(c)
        maps = frame.reshape(n, rows, h, cols, w).transpose(0, 1, 3, 2, 4).reshape(n, rows * cols, h, w)
        return np.ascontiguousarray(maps[:, :c])
    return frame


@register
class FeatureHyperprior(Codec):
    codec_id = "feature-hyperprior"
    params = {"quality": 3}
    dtypes = frozenset({"float32", "float16", "bfloat16"})
    lossy = True
    takes_shape = True
    max_expansion = 1 << 24
    qualities: ClassVar[tuple[int, ...]] = tuple(range(1, len(image_models.LAMBDAS) + 1))

    def validate(self) -> None:
        if isinstance(self.quality, bool) or self.quality not in self.qualities:
            raise BadParameterError(f"{self.codec_id}: quality must be one of {list(self.qualities)} "
                                    f"(lower = fewer bits), got {self.quality!r}")

    @staticmethod
    def model():
        return image_models.get_model(ARCH, WEIGHTS)

    def encode_payload(self, data: np.ndarray, dtype: DType, threads: int, shape: tuple = ()) -> bytes:
        import torch

        if len(shape) < 2 or 0 in shape:
            raise BadParameterError(f"{self.codec_id}: takes a non-empty T x D or N x C x H x W tensor, got shape {tuple(shape)}")
        x = float32_values(data, dtype)
        if not np.isfinite(x).all():
            raise BadParameterError(f"{self.codec_id}: the tensor holds NaN or infinity")
        frame = pack(x, tuple(shape))
        h, w = frame.shape
        if h > MAX_SIDE or w > MAX_SIDE:
            raise BadParameterError(f"{self.codec_id}: the packed frame {h} x {w} is larger than {MAX_SIDE} a side")
        model = self.model()
        lo, hi = model.meta["truncation"]
        pad = image_models.PAD
        padded = np.pad(frame, ((0, -h % pad), (0, -w % pad)), mode="edge")
        coded = model.compress(to_unit(torch.from_numpy(padded), lo, hi)[None, None], self.quality)
        dims = struct.pack(f"<B{len(shape)}Q", len(shape), *shape)
        return image_models.write_payload(MAGIC, model, h, w, coded, dims)

    def decode_payload(self, payload, dtype: DType, count: int, threads: int, out=None) -> np.ndarray:
        payload = bytes(payload)
        model = self.model()
        h, w, z_shape, zlen, at = image_models.read_payload(payload, MAGIC, model, self.codec_id, "feature")
        ndim = payload[at] if len(payload) > at else 0
        at += 1
        if not 2 <= ndim <= 64 or at + 8 * ndim > len(payload):
            raise CorruptDataError(f"{self.codec_id}: payload header is corrupt")
        shape = struct.unpack_from(f"<{ndim}Q", payload, at)
        at += 8 * ndim
        if math.prod(shape) != count or h > MAX_SIDE or w > MAX_SIDE or (h, w) != frame_shape(shape):
            raise CorruptDataError(f"{self.codec_id}: payload header does not match the frame (corrupt)")
        coded = image_models.coded_at(payload, at, zlen, z_shape, self.codec_id)
        lo, hi = model.meta["truncation"]
        unit = model.decompress(coded, self.quality)[0, 0, :h, :w].numpy()
        flat = unpack(unit * (hi - lo) + lo, shape).reshape(-1)
        raw = float32_to_bytes(flat.astype(np.float32), dtype).reshape(-1)
        if out is None:
            return raw.copy()
        out[:] = raw
        return out
