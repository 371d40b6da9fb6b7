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

Payload: magic b"NZF\\x01", 8 bytes identity of the weights, u32 frame height and width,
u16 hyper-latent height and width, u32 length Z of the hyper-latent stream, u8 number of
dimensions and u64 each (the tensor's shape, for unpacking), Z bytes of hyper-latent
stream, then the latent stream.
"""

from __future__ import annotations

import math
import struct
from typing import ClassVar

import numpy as np

from ..codecs.registry import Codec, register
from ..dtypes import DType
from ..errors import BadParameterError, CorruptDataError, FormatError
from . import image_models
from .gear import _as_float32, _from_float32

MAGIC = b"NZF\x01"
_HEADER = struct.Struct("<4s8sIIHHI")
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


def pack(x: np.ndarray, shape: tuple) -> np.ndarray:
    """The 2-D frame of a feature tensor (module docstring)."""
    if len(shape) == 4:
        n, c, h, w = shape
        cols = math.ceil(math.sqrt(c))
        rows = math.ceil(c / cols)
        maps = np.zeros((n, rows * cols, h, w), np.float32)
        maps[:, :c] = x.reshape(shape)
        return maps.reshape(n, rows, cols, h, w).transpose(0, 1, 3, 2, 4).reshape(n * rows * h, cols * w)
    return x.reshape(-1, shape[-1])


def unpack(frame: np.ndarray, shape: tuple) -> np.ndarray:
    if len(shape) == 4:
        n, c, h, w = shape
        cols = math.ceil(math.sqrt(c))
        rows = math.ceil(c / cols)
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
        x = _as_float32(data, dtype)
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
        head = _HEADER.pack(MAGIC, bytes.fromhex(model.weights_id), h, w, *coded.z_shape, len(coded.z))
        dims = struct.pack(f"<B{len(shape)}Q", len(shape), *shape)
        return head + dims + coded.z + coded.y

    def decode_payload(self, payload, dtype: DType, count: int, threads: int, out=None) -> np.ndarray:
        payload = bytes(payload)
        if len(payload) < _HEADER.size:
            raise CorruptDataError(f"{self.codec_id}: payload of {len(payload)} bytes is truncated")
        magic, weights, h, w, zh, zw, zlen = _HEADER.unpack_from(payload)
        if magic != MAGIC:
            raise FormatError(f"{self.codec_id}: not a feature payload of a layout this nzip reads")
        model = self.model()
        if weights.hex() != model.weights_id:
            raise CorruptDataError(f"{self.codec_id}: encoded with other weights ({weights.hex()}); "
                                   f"this nzip has {model.weights_id}")
        at = _HEADER.size
        ndim = payload[at] if len(payload) > at else 0
        at += 1
        if not 2 <= ndim <= 64 or at + 8 * ndim > len(payload):
            raise CorruptDataError(f"{self.codec_id}: payload header is corrupt")
        shape = struct.unpack_from(f"<{ndim}Q", payload, at)
        at += 8 * ndim
        pad = image_models.PAD
        expected = pack(np.zeros(0, np.float32), shape).shape if ndim != 4 else None
        if (math.prod(shape) != count or h > MAX_SIDE or w > MAX_SIDE or zh != -(-h // pad) or zw != -(-w // pad)
                or at + zlen > len(payload) or (expected is not None and expected[1] != w) or h * w < count):
            raise CorruptDataError(f"{self.codec_id}: payload header does not match the frame (corrupt)")
        coded = image_models.Coded(payload[at:at + zlen], payload[at + zlen:], (zh, zw))
        lo, hi = model.meta["truncation"]
        unit = model.decompress(coded, self.quality)[0, 0, :h, :w].numpy()
        flat = unpack(unit * (hi - lo) + lo, shape).reshape(-1)
        raw = _from_float32(flat.astype(np.float32), dtype).reshape(-1)
        if out is None:
            return raw.copy()
        out[:] = raw
        return out
