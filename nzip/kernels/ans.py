"""`ans` payloads of 16-bit types (bf16, fp16, int16, uint16) decoded on the GPU.

Kernel: ans_decode.cu beside this file, one warp per chunk. A payload is parsed and checked
on the host once and laid out for the GPU as one uint8 buffer (the payload's bytes, then
the decode tables, then the exponent -> context map); `decode_batch` decodes any number of
such tensors in one launch.

A warp decodes both planes of its chunk in one pass (the exponent it decodes picks the
low byte's context at once). Parallelism is one warp per chunk, so the chunk size picks it: the CPU default (1M
elements) gives a 256 MiB bf16 tensor 128 warps, far too few for a large GPU; encode
weights meant for the GPU with `chunk=1 << 16` (or smaller), as tools/bench_gpu.py --ans
measures. Lane counts above 32 must be multiples of 32 and both coded planes must have the
same (nzip's encoder always does so with auto lanes); other payloads decode on the CPU
(to_device returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codecs.entropy import rans
from ..codecs.payload import Reader
from ..errors import BadParameterError, CorruptDataError
from .cuda import Module

_SOURCE = Path(__file__).with_name("ans_decode.cu").read_text()
WARPS = 4  # chunks per CTA (the kernel's WARPS)
_JOB_FIELDS = 15
_module = Module(_SOURCE, "ans_decode.cu", [f"-DWARPS={WARPS}"])


@dataclass
class PlaneLayout:
    method: int  # 0 raw, 1 rANS, 2 rANS in context of the exponent plane
    lanes: int
    offsets: list[int]  # per chunk: where its stream (or raw bytes) starts in the image
    sizes: list[int]
    table_at: int  # byte offset of its decode table(s) in the image


@dataclass
class DeviceTensor:
    """An `ans` payload of n 16-bit elements resident on a GPU."""

    data: "object"  # torch uint8 CUDA tensor: payload bytes, decode tables, context ids
    n: int
    chunk: int
    precision: int
    rotate: bool
    torch_dtype: "object"
    planes: tuple[PlaneLayout, PlaneLayout]
    ctx_at: int  # -1: no contexts

    @property
    def nchunks(self) -> int:
        return -(-self.n // self.chunk) if self.n else 0

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def decode_tables(freqs: list[np.ndarray], precision: int) -> np.ndarray:
    """The CPU decoder's tables: slot -> symbol | (freq - 1) << 8 | (slot - start) << 20."""
    out = []
    for f in freqs:
        f = f.astype(np.int64)
        sym = np.repeat(np.arange(256), f)
        start = np.repeat(np.cumsum(f) - f, f)
        slot = np.arange(1 << precision)
        out.append((sym | (np.repeat(f - 1, f) << 8) | ((slot - start) << 20)).astype(np.uint32))
    return np.concatenate(out)


def _section(body: memoryview, method: int, n: int, chunk: int, precision: int, base: int, tables: list,
             table_at: int, ctx: np.ndarray | None) -> PlaneLayout | None:
    """Parse one plane's section (offsets relative to the payload start `base`)."""
    nchunks = -(-n // chunk)
    if method == 0:
        if len(body) != n:
            raise CorruptDataError("ans: raw plane has the wrong length")
        return PlaneLayout(0, 0, [base + a for a in range(0, n, chunk)], [min(chunk, n - a) for a in range(0, n, chunk)],
                           0)
    r = Reader(body, "ans")
    lanes = r.u8()
    if not 1 <= lanes <= rans.MAX_LANES:
        raise CorruptDataError(f"ans: bad lane count {lanes}")
    ntables = 1
    if method == 2:
        k = r.u8()
        if not 1 <= k <= 63:
            raise CorruptDataError("ans: bad context count")
        values = np.frombuffer(r.take(k), np.uint8)
        if len(set(values.tolist())) != k:
            raise CorruptDataError("ans: a context value is listed twice")
        ctx[values] = np.arange(1, k + 1, dtype=np.uint8)
        ntables = k + 1
    freqs = []
    for _ in range(ntables):
        f, r.pos = rans.unpack_table(body, r.pos, precision)
        freqs.append(f)
    sizes = r.array("<u8", nchunks).astype(np.int64)
    offsets, at = [], r.pos
    for s in sizes:
        r.take(int(s))
        offsets.append(base + at)
        at += int(s)
    r.done()
    tables.append(decode_tables(freqs, precision))
    if lanes > 32 and lanes % 32:
        return None  # the kernel's warps take lanes in whole warps
    return PlaneLayout(method, lanes, offsets, sizes.tolist(), table_at)


def host_image(payload, count: int, chunk: int, precision: int) -> tuple[np.ndarray, tuple, int] | None:
    """(image bytes, plane layouts, context map offset) for one payload; None when the
    kernel cannot take it (the CPU decodes it)."""
    payload = memoryview(payload).cast("B")
    r = Reader(payload, "ans")
    ctx = np.zeros(256, np.uint8)
    head = (len(payload) + 3) // 4 * 4
    tables: list[np.ndarray] = []
    planes = []
    for k in range(2):
        method = r.u8()
        size = r.u64()
        start = r.pos
        body = r.take(size)
        if method not in (0, 1, 2) or (method == 2 and k == 0):
            raise CorruptDataError(f"ans: unknown plane method {method}")
        table_at = head + 4 * sum(t.size for t in tables)
        plane = _section(body, method, count, chunk, precision, start, tables, table_at, ctx)
        if plane is None:
            return None
        planes.append(plane)
    r.done()
    if planes[0].method and planes[1].method and planes[0].lanes != planes[1].lanes:
        return None  # the kernel steps both planes together
    table_words = np.concatenate(tables) if tables else np.zeros(0, np.uint32)
    image = np.zeros(head + 4 * table_words.size + 256, np.uint8)
    image[: len(payload)] = np.frombuffer(payload, np.uint8)
    image[head : head + 4 * table_words.size] = table_words.view(np.uint8)
    ctx_at = head + 4 * table_words.size
    image[ctx_at:] = ctx
    return image, tuple(planes), ctx_at if planes[1].method == 2 else -1


def upload(payload, count: int, chunk: int, precision: int, dtype, device) -> DeviceTensor | None:
    """Check a 16-bit `ans` payload and place it on `device` (one host-to-device copy)."""
    import torch

    built = host_image(payload, count, chunk, precision)
    if built is None:
        return None
    image, planes, ctx_at = built
    return DeviceTensor(torch.from_numpy(image).to(device), count, chunk, precision, dtype.is_float,
                        getattr(torch, dtype.name), planes, ctx_at)


class Plan:
    """The job table of one batch (a row per chunk) on the GPU: decoding the same tensors
    into the same buffers again costs one launch."""

    def __init__(self, tensors: list[DeviceTensor], outs: list):
        import torch

        if len(tensors) != len(outs):
            raise BadParameterError("one output per tensor")
        rows = []
        for j, (t, out) in enumerate(zip(tensors, outs)):
            if out.element_size() != 2 or not out.is_contiguous() or out.numel() != t.n:
                raise BadParameterError(f"output {j}: needs a contiguous 16-bit tensor of {t.n} elements")
            if out.device != t.data.device:
                raise BadParameterError(f"output {j} is on {out.device}, the data on {t.data.device}")
            base = t.data.data_ptr()
            hi, lo = t.planes
            for c in range(t.nchunks):
                rows.append([out.data_ptr() + 2 * c * t.chunk, min(t.chunk, t.n - c * t.chunk), int(t.rotate),
                             hi.method, base + hi.offsets[c], hi.sizes[c], hi.lanes, base + hi.table_at,
                             lo.method, base + lo.offsets[c], lo.sizes[c], lo.lanes, base + lo.table_at,
                             base + t.ctx_at if t.ctx_at >= 0 else 0, t.precision])
        self.njobs = len(rows)
        self.keep = (tensors, outs)
        if not rows:
            return
        self.device = tensors[0].data.device
        self.jobs = torch.from_numpy(np.asarray(rows, np.int64).ravel()).to(self.device)
        self.status = torch.zeros(1, dtype=torch.int32, device=self.device)
        kernel = _module.kernel("ans16_decode", self.device)
        self.launch = kernel.prepare(-(-self.njobs // WARPS), 32 * WARPS, [self.jobs, self.njobs, self.status])

    def run(self, check: bool = True) -> None:
        if not self.njobs:
            return
        self.launch()
        if check and int(self.status.item()):
            self.status.zero_()
            raise CorruptDataError("ans: a stream did not decode to exactly its bytes (corrupt payload)")


def decode_batch(tensors: list[DeviceTensor], outs: list | None = None, check: bool = True) -> list:
    """Decode resident tensors in one launch into flat tensors of their dtype (by default
    new ones; or `outs`)."""
    import torch

    if outs is None:
        outs = [torch.empty(t.n, dtype=t.torch_dtype, device=t.data.device) for t in tensors]
    Plan(tensors, outs).run(check)
    return outs
