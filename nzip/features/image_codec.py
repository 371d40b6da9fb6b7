"""The learned image codec `image-hyperprior`: H x W x 3 uint8 images, lossy.

    blob = codecs.encode(image, "image-hyperprior", quality=3)   # 1 (fewest bits) .. 6
    image_hat = codecs.decode(blob)                               # H x W x 3 uint8

The frame (nzip's, with its checksum and codec config) holds this payload:

    offset  size  field
    0       4     magic b"NZI\\x01" (the payload layout's version in the last byte)
    4       8     identity of the model's weights (XXH3-64 of the weights file)
    12      4     image height, u32 LE
    16      4     image width, u32 LE
    20      2     hyper-latent height, u16 LE   (the padded image's height / 64)
    22      2     hyper-latent width, u16 LE
    24      4     length Z of the hyper-latent's rANS stream, u32 LE
    28      Z     hyper-latent stream (CompressAI's entropy bottleneck)
    28+Z    ...   latent stream (CompressAI's Gaussian conditional)

Images are padded (edge pixels repeated) to a multiple of 64 on each side; the decoder
crops back to the recorded size, so any size round-trips.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..codecs.registry import Codec, register
from ..dtypes import DType
from ..errors import BadParameterError, CorruptDataError
from . import image_models

MAGIC = b"NZI\x01"
MAX_SIDE = 1 << 15  # 32768 px: far beyond what a CPU decodes in reasonable time


@register
class ImageHyperprior(Codec):
    """CompressAI hyperprior models trained by nzip (see nzip.features.image_models)."""

    codec_id = "image-hyperprior"
    params = {"quality": 3, "model": image_models.DEFAULT_ARCH}
    dtypes = frozenset({"uint8"})
    lossy = True
    takes_shape = True
    # a flat image codes to a few hundred bytes for megapixels
    max_expansion = 1 << 24
    qualities: ClassVar[tuple[int, ...]] = tuple(range(1, len(image_models.LAMBDAS) + 1))
    models: ClassVar[tuple[str, ...]] = tuple(image_models.ARCHS)

    def validate(self) -> None:
        if self.model not in image_models.ARCHS:
            raise BadParameterError(f"{self.codec_id}: model must be one of {list(image_models.ARCHS)}, got {self.model!r}")
        if isinstance(self.quality, bool) or self.quality not in self.qualities:
            raise BadParameterError(f"{self.codec_id}: quality must be one of {list(self.qualities)} "
                                    f"(lower = fewer bits), got {self.quality!r}")

    # -- encode ------------------------------------------------------------------------
    def encode_payload(self, data: np.ndarray, dtype: DType, threads: int, shape: tuple = ()) -> bytes:
        if len(shape) != 3 or shape[2] != 3:
            raise BadParameterError(f"{self.codec_id}: takes an H x W x 3 uint8 image, got shape {tuple(shape)}")
        h, w = shape[:2]
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise BadParameterError(f"{self.codec_id}: image sides must be 1..{MAX_SIDE}, got {h} x {w}")
        image = data.reshape(shape)
        padded = np.pad(image, ((0, -h % image_models.PAD), (0, -w % image_models.PAD), (0, 0)), mode="edge")
        model = image_models.get_model(self.model)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None].float().div_(255)
        coded = model.compress(x, self.quality)
        return image_models.write_payload(MAGIC, model, h, w, coded)

    # -- decode ------------------------------------------------------------------------
    def _parse(self, payload, count: int):
        payload = bytes(payload)
        model = image_models.get_model(self.model)
        h, w, z_shape, zlen, at = image_models.read_payload(payload, MAGIC, model, self.codec_id, "image", self.model)
        if h * w * 3 != count or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise CorruptDataError(f"{self.codec_id}: payload header does not match the frame (corrupt)")
        coded = image_models.coded_at(payload, at, zlen, z_shape, self.codec_id)
        return model, coded, h, w

    def _decode(self, payload, count: int, device):
        import torch

        model, coded, h, w = self._parse(payload, count)
        x = model.decompress(coded, self.quality, device=device)
        return x[0, :, :h, :w].permute(1, 2, 0).mul(255).round_().to(torch.uint8)

    def decode_payload(self, payload, dtype: DType, count: int, threads: int, out=None) -> np.ndarray:
        flat = self._decode(payload, count, "cpu").reshape(-1).numpy()
        if out is None:
            return flat
        out[:] = flat
        return out

    # the GPU path: codecs.decode(blob, device="cuda") runs the synthesis transform there
    def to_device(self, payload, dtype: DType, count: int, device):
        return (bytes(payload), count, device)

    def decode_on_device(self, resident_list: list, outs=None, check: bool = True) -> list:
        return [self._decode(payload, count, device).reshape(-1) for payload, count, device in resident_list]
