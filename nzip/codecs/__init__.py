"""The codec registry and every codec that turns an array or tensor into bytes.

    from nzip import codecs
    blob = codecs.encode(tensor, "dfloat11")
    same = codecs.decode(blob)
"""

from . import ans, dfloat11, planes, raw, zstd  # noqa: F401  (registers the built-in codecs)
from .circuits import codec as _pc  # noqa: F401, E402  (lossless: probabilistic circuits)
from ..features import feature_codec, gear, image_codec  # noqa: F401, E402  (lossy: features, images)
from .api import decode, decode_many, encode
from .registry import Codec, available, get, register

__all__ = ["Codec", "available", "decode", "decode_many", "encode", "get", "register"]
