"""`dfloat11`: bf16 with Huffman-coded exponents (the DFloat11 idea), block-parallel.

bf16 = sign | exponent (8 bits) | mantissa (7 bits). The exponent goes through a canonical
Huffman code of at most `code_length_limit` bits; sign and mantissa are kept as one raw
byte (sign << 7 | mantissa). The exponent bit stream is cut into blocks of `block`
elements whose starting bit positions are stored, so every block decodes on its own: on
CPU threads here, on GPU threads in nzip's CUDA decoder, which reads this same layout.

Payload (all little-endian):
    32 bytes   bitmap of the exponent values present (MSB-first, numpy.packbits order)
    k x u8     their code lengths, k = number present; canonical codes follow from them
    nblocks x u16   bits in each block (block * code_length_limit < 2**16 keeps it in
               range); a prefix sum gives where each block starts
    ceil(nbits / 8) + 8 bytes   the stream, MSB-first, zero-padded by 8 bytes
    n x u8     sign-mantissa bytes
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptDataError
from ..parallel import pmap
from .entropy import _entropy, huffman, rans
from .payload import Reader
from .registry import Codec, register

PAD = 8


@register
class DFloat11(Codec):
    codec_id = "dfloat11"
    max_expansion = 2
    params = {"code_length_limit": 12, "block": 2048}
    dtypes = frozenset({"bfloat16"})

    def validate(self):
        self._check_int("code_length_limit", 8, 16)
        self._check_int("block", 32, 65535 // self.code_length_limit)

    def encode_payload(self, data, dtype, threads):
        n = data.size // 2
        exp = np.empty(n, np.uint8)
        sm = np.empty(n, np.uint8)
        _entropy.bf16_split(data, exp, sm)
        lengths = huffman.code_lengths(rans.histogram(exp), self.code_length_limit)
        codes = huffman.canonical_codes(lengths)
        nblocks = -(-n // self.block)
        offsets = np.zeros(nblocks, np.uint64)
        stream = bytearray(n * int(lengths.max(initial=0)) // 8 + 16 + PAD)
        nbits = _entropy.huff_encode(exp, codes, lengths, self.block, stream, offsets) if n else 0
        block_bits = np.diff(np.append(offsets, np.uint64(nbits)))
        present = lengths > 0
        return b"".join([
            np.packbits(present).tobytes(),
            lengths[present].tobytes(),
            block_bits.astype("<u2").tobytes(),
            bytes(memoryview(stream)[: -(-nbits // 8) + PAD]),
            sm.tobytes(),
        ])

    def decode_payload(self, payload, dtype, count, threads, out=None):
        r = Reader(payload, "dfloat11")
        present = np.unpackbits(r.array("u1", 32)).astype(bool)
        lengths = np.zeros(256, np.uint8)
        lengths[present] = r.array("u1", int(present.sum()))
        nblocks = -(-count // self.block)
        block_bits = r.array("<u2", nblocks).astype(np.uint64)
        offsets = np.concatenate([[0], np.cumsum(block_bits)]).astype(np.uint64)
        nbits = int(offsets[-1])
        offsets = offsets[:-1]
        stream = r.take(-(-nbits // 8) + PAD)
        sm = r.take(count)
        r.done()
        out = np.empty(2 * count, np.uint8) if out is None else out
        if count == 0:
            return out
        huffman.check_lengths(lengths, self.code_length_limit)
        lut, max_len = huffman.decode_table(lengths)
        # blocks are split evenly between threads; each range is checked inside the C loop
        per = -(-nblocks // max(1, threads))
        ranges = [(a, min(a + per, nblocks)) for a in range(0, nblocks, per)]

        def run(span):
            return _entropy.huff_decode_bf16(stream, lut, max_len, offsets, nbits, self.block, sm, out, *span)

        if any(rc != 0 for rc in pmap(run, ranges, threads)):
            raise CorruptDataError("dfloat11: exponent stream is corrupt")
        return out
