"""codecs.encode / codecs.decode: a codec's payload wrapped in a frame."""

from __future__ import annotations

import math

import numpy as np

from ..dtypes import DType, dtype_from_name, from_bytes, is_torch, to_bytes
from ..errors import BadParameterError, ChecksumError, CorruptDataError, FormatError, NzipError
from ..formats import frame as frame_format
from ..formats.checksum import raw_hash_matches, xxh3
from ..parallel import SideTask
from .registry import Codec, get, resolve_threads
from .scratch import fresh_buffers, prefault, worth_prefaulting

# Refuse headers that describe more than this many bytes before allocating anything.
MAX_DECODED_BYTES = 1 << 42


def encode_with(codec: Codec, obj, threads: int = 0) -> bytes:
    raw, dtype, shape, kind = to_bytes(obj)
    codec.check_dtype(dtype)
    extra = {"shape": shape} if codec.takes_shape else {}
    payload = codec.encode_payload(raw, dtype, resolve_threads(threads), **extra)
    header = {
        "codec": codec.get_config(),
        "dtype": dtype.name,
        "shape": list(shape),
        "kind": kind,
    }
    if not codec.lossy:  # what verify=True checks the decoded bytes against
        header["raw_xxh3"] = f"{xxh3(raw):016x}"
    return frame_format.pack(header, payload)


def encode(obj, codec: str | dict | Codec = "zstd", threads: int = 0, **params) -> bytes:
    """Encode a numpy array or torch tensor with the named codec; returns a frame (bytes).

    threads=0 uses every core, threads=1 stays single-threaded. Extra keyword arguments
    are the codec's parameters, e.g. encode(t, "zstd", level=19).
    """
    return encode_with(get(codec, **params), obj, threads=threads)


def check_shape(dtype_name, shape) -> tuple[DType, tuple[int, ...], int]:
    """Validate a (dtype, shape) pair read from a header; returns (dtype, shape, count)."""
    try:
        dtype = dtype_from_name(dtype_name)
    except NzipError as exc:
        raise FormatError(f"header names {exc}") from None
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d for d in shape) or len(shape) > 64:
        raise FormatError(f"header has an invalid shape {shape!r}")
    count = math.prod(shape)
    if count * dtype.itemsize > MAX_DECODED_BYTES:
        raise FormatError(f"header shape {shape} describes {count * dtype.itemsize} bytes: refusing")
    return dtype, tuple(shape), count


def check_payload(codec: Codec, payload, dtype: DType, count: int) -> None:
    """The codec takes this dtype, and the payload could hold what the header promises:
    checked before anything is allocated."""
    codec.check_dtype(dtype)
    if count * dtype.itemsize > len(payload) * codec.max_expansion + (1 << 20):
        raise CorruptDataError(f"{codec.codec_id}: a payload of {len(payload)} bytes cannot hold "
                               f"{count * dtype.itemsize} bytes: the header is corrupt")


def decode_raw(codec: Codec, payload, dtype: DType, count: int, threads: int, raw_hash: str | None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Run a codec's decoder; with raw_hash, also check that it produced exactly the bytes
    that were encoded (verification does; plain decoding relies on the payload checksum,
    which has already been checked, and saves a pass over the output)."""
    check_payload(codec, payload, dtype, count)
    payload = memoryview(payload).cast("B")
    if out is not None:
        raw = codec.decode_into(payload, dtype, count, resolve_threads(threads), out)
    else:
        raw = codec.decode_payload(payload, dtype, count, resolve_threads(threads))
    if raw.dtype != np.uint8 or raw.size != count * dtype.itemsize:
        raise CorruptDataError(f"{codec.codec_id}: decoded {raw.size} bytes, expected {count * dtype.itemsize}")
    check_raw_hash(raw, raw_hash, codec)
    return raw


def check_raw_hash(raw: np.ndarray, raw_hash: str | None, codec: Codec) -> None:
    """The decoded bytes are the original's (its checksum was taken at encode time)."""
    if raw_hash is not None and not raw_hash_matches(raw, raw_hash):
        raise CorruptDataError(f"{codec.codec_id}: decoded bytes do not match the checksum of the original")


def decode_jobs(jobs: list, threads: int, fresh: bool = False, side: SideTask | None = None) -> None:
    """Decode (codec, payload, dtype, count, out) jobs, grouping them by codec so that each
    codec's batch path (Codec.decode_payloads) sees all of its payloads at once. fresh: the
    outs are fresh_buffers worth prefaulting; codecs that fault in their output ahead of
    their decoders (Codec.faults_in_output) do it themselves, and run `side` meanwhile; the
    others' output is faulted in here, while `side` runs on the pool."""
    groups: dict[int, tuple] = {}
    for codec, payload, dtype, count, out in jobs:
        check_payload(codec, payload, dtype, count)
        groups.setdefault(id(codec), (codec, []))[1].append((memoryview(payload).cast("B"), dtype, count, out))
    threads = resolve_threads(threads)
    taker = next((codec for codec, _ in groups.values() if fresh and codec.faults_in_output), None)
    if side is not None and taker is None:
        side.start(threads)
    for codec, group in groups.values():
        if fresh and codec.faults_in_output:
            codec.decode_payloads(group, threads, fresh=True, side=side if codec is taker else None)
            continue
        if fresh:
            prefault([job[3] for job in group])
        codec.decode_payloads(group, threads)


def decode_many(frames, out=None, threads: int = 0) -> list:
    """Decode many frames at once (a whole model): faster than one decode() per frame,
    because codecs decode their payloads in one batch across threads. out: optionally one
    preallocated buffer per frame (as for decode); otherwise each result gets fresh memory
    of its own (scratch.fresh_buffers)."""
    threads = resolve_threads(threads)
    # the checksums are checked while the payloads decode (the decoders are bounds-checked:
    # unchecked bytes cannot make them misbehave); nothing is returned, and no error but
    # ChecksumError raised, unless every frame's checksum holds
    checked = SideTask(lambda: [frame_format.checksum_ok(f) for f in frames])
    try:
        parsed = [_parse_frame(f, verify=False) for f in frames]
        if out is None:
            sizes = [p[4] * p[2].itemsize for p in parsed]
            bufs = fresh_buffers(sizes)
            fresh = worth_prefaulting(sum(sizes), sum(len(p[1]) for p in parsed))
        else:
            if len(out) != len(parsed):
                raise BadParameterError("decode_many: one out buffer per frame")
            bufs = [_out_bytes(o, p[4] * p[2].itemsize) for o, p in zip(out, parsed)]
            fresh = False
        decode_jobs([(get(h["codec"]), payload, dtype, count, buf)
                     for (h, payload, dtype, shape, count), buf in zip(parsed, bufs)], threads, fresh, checked)
    except NzipError:
        _raise_bad_checksum(checked.result())
        raise
    _raise_bad_checksum(checked.result())
    if out is not None:
        return list(out)
    return [from_bytes(buf, dtype, shape, h["kind"]) for (h, _, dtype, shape, _), buf in zip(parsed, bufs)]


def _raise_bad_checksum(oks: list[bool]) -> None:
    if not all(oks):
        raise ChecksumError(f"frame {oks.index(False)}: checksum mismatch: the data is corrupted or truncated")


def decode_on_device(codec: Codec, payload, dtype: DType, count: int, shape: tuple, device):
    """Decode on a GPU when the codec has a GPU decoder: only the compressed bytes travel.
    None when it has none (or device is the CPU): the caller decodes on the CPU."""
    if device is None:
        return None
    import torch

    if torch.device(device).type == "cpu":
        return None
    resident = to_device(codec, payload, dtype, count, device)
    if resident is None:
        return None
    return codec.decode_on_device([resident])[0].view(shape)


def to_device(codec: Codec, payload, dtype: DType, count: int, device):
    """The payload, checked, in the codec's GPU-resident form; None if it has none."""
    check_payload(codec, payload, dtype, count)
    return codec.to_device(memoryview(payload).cast("B"), dtype, count, device)


def _parse_frame(frame, verify: bool = True) -> tuple[dict, memoryview, DType, tuple[int, ...], int]:
    """Check a frame (checksum first, unless verify=False) and its header: (header, payload,
    dtype, shape, count)."""
    header, payload = frame_format.unpack(frame, verify)
    dtype, shape, count = check_shape(header.get("dtype"), header.get("shape"))
    kind = header.get("kind")
    if kind not in ("torch", "numpy"):
        raise FormatError(f"frame header has an unknown kind {kind!r}")
    if not isinstance(header.get("codec"), dict):
        raise FormatError("frame header has no codec config")
    return header, payload, dtype, shape, count


def _out_bytes(out, nbytes: int) -> np.ndarray:
    """A flat uint8 view of a caller's output buffer (numpy array or CPU torch tensor)."""
    if is_torch(out):
        if out.device.type != "cpu" or not out.is_contiguous():
            raise BadParameterError("out must be a contiguous CPU tensor")
        import torch

        flat = out.reshape(-1).view(torch.uint8) if out.numel() else out.reshape(-1)
        arr = flat.numpy()
    elif isinstance(out, np.ndarray):
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise BadParameterError("out must be a writeable C-contiguous array")
        arr = out.reshape(-1).view(np.uint8)
    else:
        raise BadParameterError("out must be a numpy array or a torch tensor")
    if arr.nbytes != nbytes:
        raise BadParameterError(f"out holds {arr.nbytes} bytes, the frame decodes to {nbytes}")
    return arr


def decode(frame, device=None, threads: int = 0, verify: bool = False, out=None):
    """Decode a frame from `encode`: returns the same kind (numpy/torch), dtype, shape and
    bits. device (torch only) moves the result, e.g. device="cuda". The frame's checksum
    is always checked; verify=True also checks the decoded bytes against the checksum of
    the original taken at encode time. With out= (a numpy array or CPU tensor of the right
    size in bytes, any dtype), the data is decoded into it and out is returned."""
    header, payload, dtype, shape, count = _parse_frame(frame)
    codec = get(header["codec"])
    if out is None and header["kind"] == "torch":
        on_device = decode_on_device(codec, payload, dtype, count, shape, device)
        if on_device is not None:
            if verify:
                check_raw_hash(to_bytes(on_device.cpu())[0], header.get("raw_xxh3"), codec)
            return on_device
    if out is not None:
        decode_raw(codec, payload, dtype, count, threads, header.get("raw_xxh3") if verify else None,
                   out=_out_bytes(out, count * dtype.itemsize))
        return out
    raw = decode_raw(codec, payload, dtype, count, threads, header.get("raw_xxh3") if verify else None)
    return from_bytes(raw, dtype, shape, header["kind"], device=device)
