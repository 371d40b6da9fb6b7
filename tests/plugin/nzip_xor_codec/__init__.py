"""A toy third-party codec: bytes XOR a key, then zstd. Registered through an entry point."""

import numpy as np
import zstandard

from nzip.codecs import Codec


class XorCodec(Codec):
    codec_id = "xor"
    params = {"key": 90}

    def encode_payload(self, data, dtype, threads):
        return zstandard.compress((data ^ np.uint8(self.key)).tobytes())

    def decode_payload(self, payload, dtype, count, threads):
        raw = np.frombuffer(zstandard.decompress(bytes(payload)), np.uint8)
        return raw ^ np.uint8(self.key)
