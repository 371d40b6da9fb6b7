"""`dfloat11`: bf16 with Huffman-coded exponents (the DFloat11 idea), block-parallel.

bf16 = sign | exponent (8 bits) | mantissa (7 bits). The exponent goes through a canonical
Huffman code of at most `code_length_limit` bits; sign and mantissa are kept as one raw
byte (sign << 7 | mantissa). The exponent bit stream is cut into blocks of `block`
elements whose bit lengths are stored, so every block decodes on its own: on CPU threads
here (_entropy.dfloat11_decode parses and checks the payload and decodes in one call:
eight blocks in lockstep, up to six codes per table lookup), on GPU threads in nzip's
CUDA decoder, which reads this same layout.

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

from ..parallel import split_big
from .entropy import _entropy, huffman, rans
from .payload import check_status
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
        # parts, joined once by the frame or written one by one by the container
        return [
            np.packbits(present).tobytes(),
            lengths[present].tobytes(),
            block_bits.astype("<u2").tobytes(),
            memoryview(stream)[: -(-nbits // 8) + PAD],
            memoryview(sm),
        ]

    def decode_payload(self, payload, dtype, count, threads, out=None):
        out = np.empty(2 * count, np.uint8) if out is None else out
        check_status(_entropy.dfloat11_decode(payload, self.block, self.code_length_limit, out, threads), "dfloat11")
        return out

    def decode_payloads(self, jobs: list, threads: int) -> None:
        """Small tensors in one compiled batch across threads; a tensor bigger than a
        thread's share alone, its blocks split between every thread."""
        big, small = split_big(jobs, threads, cost=lambda j: len(j[0]))
        for payload, dtype, count, out in big:
            self.decode_payload(payload, dtype, count, threads, out=out)
        if small:
            rcs = _entropy.dfloat11_decode_batch([(p, out, self.block, self.code_length_limit) for p, d, c, out in small],
                                                 threads)
            for rc in rcs:
                check_status(rc, "dfloat11")

    def to_device(self, payload, dtype, count, device):
        import torch

        if torch.device(device).type != "cuda":
            return None
        from ..kernels import dfloat11 as gpu

        return gpu.upload(payload, count, self.block, self.code_length_limit, device)

    def decode_on_device(self, resident_list, outs=None, check=True):
        from ..kernels import dfloat11 as gpu

        return gpu.decode_batch(resident_list, outs, check)
