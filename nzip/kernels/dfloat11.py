"""`dfloat11` payloads decoded on the GPU (kernel: dfloat11_decode.cu beside this file).

A payload is parsed and checked on the host once, laid out for the GPU (`DeviceTensor`: one
uint8 CUDA buffer with the lookup table, block offsets, exponent stream and sign-mantissa
bytes), and then decoded as often as needed: weights can stay compressed on the GPU and be
decoded just before use. `decode_batch` decodes many tensors in one launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codecs.payload import Reader
from ..errors import BadParameterError, CorruptDataError
from .cuda import Module

_SOURCE = Path(__file__).with_name("dfloat11_decode.cu").read_text()
THREADS = 128  # the kernels' THREADS (tools/bench_gpu.py --sweep chose them)
ROUND = 64  # exponents per thread between two CTA-wide writes (32 where blocks are not multiples of 64)
SHARED_LUT_BITS = 14
MIN_CTAS = 8  # __launch_bounds__ minimum CTAs per SM: caps registers at 64, one wave holds more blocks
MULTI_BITS = 11  # index bits of the multi-code table: 16 KiB of shared memory (12 bits: 32 KiB, fewer CTAs)
_modules: dict[tuple, Module] = {}


def _module(threads: int = THREADS, round_: int = ROUND, shared_lut_bits: int = SHARED_LUT_BITS,
            min_ctas: int = MIN_CTAS) -> Module:
    """The kernels compiled with these tuning constants (tools/bench_gpu.py compares them)."""
    key = (threads, round_, shared_lut_bits, min_ctas)
    if key not in _modules:
        _modules[key] = Module(_SOURCE, "dfloat11_decode.cu", [f"-DTHREADS={threads}", f"-DROUND={round_}",
                                                               f"-DSHARED_LUT_BITS={shared_lut_bits}", f"-DMIN_CTAS={min_ctas}"])
    return _modules[key]


_JOB_FIELDS = 12


def _align(x: int, a: int) -> int:
    return x + (-x % a)


@dataclass
class DeviceTensor:
    """A `dfloat11` payload resident on a GPU, ready to decode into n bf16 values."""

    data: "object"  # torch uint8 CUDA tensor holding every section
    n: int
    block: int
    maxlen: int
    lut_at: int
    offsets_at: int
    stream_at: int
    stream_bytes: int
    sm_at: int
    multi_at: int
    kbits: int

    @property
    def nblocks(self) -> int:
        return -(-self.n // self.block)

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def host_image(payload, count: int, block: int, limit: int, multi_bits: int = MULTI_BITS) -> tuple[np.ndarray, dict]:
    """Parse and check a payload; returns the bytes to upload and where each section is.
    Same checks as the CPU decoder: nothing the GPU reads can lie outside the buffer."""
    r = Reader(memoryview(payload).cast("B"), "dfloat11")
    present = np.unpackbits(r.array("u1", 32)).astype(bool)
    k = int(present.sum())
    lengths = np.zeros(256, np.int64)
    lengths[present] = r.array("u1", k)
    nblocks = -(-count // block)
    block_bits = r.array("<u2", nblocks).astype(np.uint64)
    offsets = np.zeros(nblocks + 1, np.uint64)
    np.cumsum(block_bits, out=offsets[1:])
    nbits = int(offsets[-1])
    stream = r.take(-(-nbits // 8) + 8)
    sm = r.take(count)
    r.done()
    if count and (k == 0 or lengths[present].min() < 1 or lengths.max() > limit
                  or sum(1 << (limit - int(l)) for l in lengths[present]) > (1 << limit)):
        raise CorruptDataError("dfloat11: the code lengths do not form a prefix code")
    maxlen = max(int(lengths.max()), 1)
    # canonical order (length, symbol): each code takes 2^(maxlen - length) table entries
    order = np.flatnonzero(lengths)
    order = order[np.argsort(lengths[order], kind="stable")]
    lut = np.zeros(1 << maxlen, np.uint16)
    reps = (1 << (maxlen - lengths[order])).astype(np.int64)
    filled = int(reps.sum())
    lut[:filled] = np.repeat((lengths[order] << 8 | order).astype(np.uint16), reps)
    kbits = min(maxlen, multi_bits)
    multi = multi_code_table(lut, maxlen, kbits)

    where, size = {}, 0
    for name, nbytes, align in (("lut", lut.nbytes, 16), ("multi", multi.nbytes, 16), ("offsets", offsets.nbytes, 16),
                                ("stream", len(stream) + 16, 16), ("sm", count, 16)):
        size = _align(size, align)
        where[name] = size
        size += nbytes
    image = np.zeros(_align(size, 16), np.uint8)
    image[where["lut"]: where["lut"] + lut.nbytes] = lut.view(np.uint8)
    image[where["multi"]: where["multi"] + multi.nbytes] = multi.view(np.uint8)
    image[where["offsets"]: where["offsets"] + offsets.nbytes] = offsets.view(np.uint8)
    image[where["stream"]: where["stream"] + len(stream)] = np.frombuffer(stream, np.uint8)
    image[where["sm"]: where["sm"] + count] = np.frombuffer(sm, np.uint8)
    where.update(maxlen=maxlen, stream_bytes=len(stream), kbits=kbits)
    return image, where


def multi_code_table(lut: np.ndarray, maxlen: int, kbits: int) -> np.ndarray:
    """For every kbits-bit window: the (up to four) codes wholly inside it, as the kernel
    reads them: exponents in bytes 0-3, count in bits 32-34, the length of the first k codes
    in bits 32 + 4k; 0 where the first code is longer than kbits or no code starts there.
    kbits <= maxlen."""
    window = np.arange(1 << kbits, dtype=np.int64)
    mask = (1 << kbits) - 1
    entry = np.zeros(window.size, np.uint64)
    count = np.zeros(window.size, np.int64)
    used = np.zeros(window.size, np.int64)
    live = np.ones(window.size, bool)
    for k in range(1, 5):
        # the bits after the codes taken so far, zero-padded: a code counts only if it ends
        # inside the window
        e = lut[((window << used) & mask) << (maxlen - kbits)].astype(np.int64)
        length = e >> 8
        live &= (e != 0) & (length <= kbits - used)
        count += live
        used += np.where(live, length, 0)
        entry |= np.where(live, (e & 0xFF) << (8 * (k - 1)) | used << (32 + 4 * k), 0).astype(np.uint64)
    return entry | (count.astype(np.uint64) << np.uint64(32))


def upload(payload, count: int, block: int, limit: int, device, multi_bits: int = MULTI_BITS) -> DeviceTensor:
    """Check a payload and place it on `device` (one host-to-device copy)."""
    import torch

    image, w = host_image(payload, count, block, limit, multi_bits)
    data = torch.from_numpy(image).to(device)
    return DeviceTensor(data, count, block, w["maxlen"], w["lut"], w["offsets"], w["stream"], w["stream_bytes"],
                        w["sm"], w["multi"], w["kbits"])


def upload_frame(frame, device) -> tuple[DeviceTensor, tuple]:
    """A `dfloat11` frame (from codecs.encode), checked and placed on `device`: (resident
    tensor, its shape)."""
    from ..codecs.api import _parse_frame, check_payload, get

    header, payload, dtype, shape, count = _parse_frame(frame)
    codec = get(header["codec"])
    if codec.codec_id != "dfloat11":
        raise BadParameterError(f"upload_frame takes dfloat11 frames, this one is {codec.codec_id}")
    check_payload(codec, payload, dtype, count)
    return upload(payload, count, codec.block, codec.code_length_limit, device), shape


class Plan:
    """The job table of one batch, on the GPU: decoding the same tensors into the same
    buffers again (every forward pass) costs one launch and nothing on the host."""

    def __init__(self, tensors: list[DeviceTensor], outs: list, threads: int = THREADS, round_: int | None = None,
                 shared_lut_bits: int = SHARED_LUT_BITS, min_ctas: int = MIN_CTAS):
        import torch

        if round_ is None:
            round_ = ROUND if all(t.block % ROUND == 0 for t in tensors) else 32
        self.tuning = (threads, round_, shared_lut_bits, min_ctas)
        if len(tensors) != len(outs):
            raise BadParameterError("one output per tensor")
        rows, cta_job, first, staged, long_codes = [], [], 0, True, False
        for j, (t, out) in enumerate(zip(tensors, outs)):
            if out.dtype != torch.bfloat16 or not out.is_contiguous() or out.numel() != t.n:
                raise BadParameterError(f"output {j}: needs a contiguous bf16 tensor of {t.n} elements")
            if out.device != t.data.device:
                raise BadParameterError(f"output {j} is on {out.device}, the data on {t.data.device}")
            if t.n == 0:
                continue
            base = t.data.data_ptr()
            # the staged kernel needs rounds of 32 whole values and aligned vector accesses
            long_codes |= t.maxlen > t.kbits
            staged &= t.block % round_ == 0 and out.data_ptr() % 16 == 0 and (base + t.sm_at) % 8 == 0
            ctas = -(-t.nblocks // threads)
            rows.append([base + t.lut_at, base + t.offsets_at, base + t.stream_at, base + t.sm_at, out.data_ptr(),
                         t.n, t.stream_bytes, t.block, t.maxlen, first, base + t.multi_at, t.kbits])
            cta_job += [len(rows) - 1] * ctas
            first += ctas
        self.device = tensors[0].data.device if tensors else None
        self.ctas = first
        self.kernel_name = ("dfloat11_decode_long" if long_codes else "dfloat11_decode") if staged else \
            "dfloat11_decode_any"
        self.keep = (tensors, outs)  # the table points into these
        if not rows:
            return
        if staged:  # the multi-code table
            self.shared = 8 << max(t.kbits for t in tensors if t.n)
        else:  # the code table, when it is small enough
            maxlen = max(t.maxlen for t in tensors if t.n)
            self.shared = 2 << maxlen if maxlen <= shared_lut_bits else 0
        # the job table and the CTA-to-job map travel in one small upload
        jobs = np.asarray(rows, np.int64).ravel().view(np.uint8)
        table = torch.from_numpy(np.concatenate([jobs, np.asarray(cta_job, np.int32).view(np.uint8)])).to(self.device)
        self.jobs = table[: jobs.size].view(torch.int64)
        self.cta_job = table[jobs.size:].view(torch.int32)
        self.status = torch.zeros(1, dtype=torch.int32, device=self.device)
        kernel = _module(*self.tuning).kernel(self.kernel_name, self.device)
        self.launch = kernel.prepare(self.ctas, threads, [self.jobs, self.cta_job, self.status], shared=self.shared)

    def run(self, check: bool = True) -> None:
        """Decode (on torch's current stream). check=True waits for the GPU and raises
        CorruptDataError if any block did not decode to exactly its bits."""
        if not self.ctas:
            return
        self.launch()
        if check and int(self.status.item()):
            self.status.zero_()
            raise CorruptDataError("dfloat11: a block did not decode to its recorded length (corrupt payload)")


def decode(t: DeviceTensor, out=None, check: bool = True):
    """Decode one resident tensor into a new (or the given) flat bf16 CUDA tensor."""
    return decode_batch([t], None if out is None else [out], check)[0]


def decode_batch(tensors: list[DeviceTensor], outs: list | None = None, check: bool = True) -> list:
    """Decode many resident tensors in one launch. outs: flat bf16 views (e.g. slices of
    one preallocated buffer); by default one new buffer holds them all."""
    import torch

    if outs is None:
        if not tensors:
            return []
        buf = torch.empty(sum(_align(t.n, 8) for t in tensors), dtype=torch.bfloat16, device=tensors[0].data.device)
        outs, at = [], 0
        for t in tensors:
            outs.append(buf[at: at + t.n])
            at += _align(t.n, 8)
    Plan(tensors, outs).run(check)
    return outs
