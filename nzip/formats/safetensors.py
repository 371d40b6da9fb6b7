"""Reading .safetensors exactly: the header bytes and every byte between tensors are kept,
so that a packed file unpacks to the identical file (header text and padding included).
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..codecs.auto import resolve
from ..codecs.registry import resolve_threads
from ..dtypes import dtype_from_name
from ..errors import ChecksumError, FormatError, TruncatedError
from ..parallel import pmap
from . import container
from .atomic import atomic_write
from .checksum import hasher, xxh3

# safetensors dtype code -> nzip dtype name
DTYPE_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16",
    "BF16": "bfloat16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "C64": "complex64",
}
MAX_HEADER = 100 << 20


@dataclass
class Entry:
    name: str
    dtype: str  # nzip dtype name
    shape: list[int]
    begin: int  # absolute file offsets
    end: int


@dataclass
class Layout:
    preamble_size: int  # 8 + header length: these bytes are kept verbatim
    entries: list[Entry]  # sorted by offset
    metadata: dict[str, str]
    size: int  # whole file


def parse(buf) -> Layout:
    """Parse a safetensors file held in a buffer (an mmap works); checks that tensors lie
    inside the file and do not overlap."""
    if len(buf) < 8:
        raise TruncatedError("not a safetensors file: shorter than 8 bytes")
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if hlen > MAX_HEADER or 8 + hlen > len(buf):
        raise FormatError("not a safetensors file: bad header length")
    try:
        header = json.loads(bytes(buf[8 : 8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not a safetensors file: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError("not a safetensors file: header is not a JSON object")
    base = 8 + hlen
    metadata = header.pop("__metadata__", None) or {}
    entries = []
    for name, info in header.items():
        try:
            dtype = DTYPE_NAMES[info["dtype"]]
            begin, end = (int(v) for v in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"safetensors entry {name!r} is malformed or has an unsupported dtype") from None
        if not 0 <= begin <= end or base + end > len(buf):
            raise FormatError(f"safetensors entry {name!r} lies outside the file")
        entries.append(Entry(name, dtype, shape, base + begin, base + end))
    entries.sort(key=lambda e: (e.begin, e.end))
    for a, b in zip(entries, entries[1:]):
        if b.begin < a.end:
            raise FormatError(f"safetensors entries {a.name!r} and {b.name!r} overlap")
    return Layout(base, entries, metadata, len(buf))


# -- exact repacking ------------------------------------------------------------------------

def pack(src, dst, codec="auto", threads: int = 0, overwrite: bool = False, progress=None) -> dict:
    """Pack a .safetensors file into a container that unpacks to the identical file."""
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        view = None
        try:
            layout = parse(mm)
            view = np.frombuffer(mm, np.uint8) if size else np.zeros(0, np.uint8)
            # bytes not covered by any tensor (alignment padding, or anything else)
            gaps, pos = [], layout.preamble_size
            for e in layout.entries:
                if e.begin > pos:
                    gaps.append({"offset": pos, "data": base64.b64encode(mm[pos : e.begin]).decode()})
                pos = max(pos, e.end)
            if pos < size:
                gaps.append({"offset": pos, "data": base64.b64encode(mm[pos:size]).decode()})
            source = {
                "kind": "safetensors",
                "size": size,
                "xxh3": f"{xxh3(mm):016x}",
                "preamble": base64.b64encode(mm[: layout.preamble_size]).decode(),
                "gaps": gaps,
            }

            def items():
                for e in layout.entries:
                    dtype = dtype_from_name(e.dtype)
                    raw = view[e.begin : e.end]
                    if raw.size != dtype.itemsize * int(np.prod(e.shape, dtype=np.int64)):
                        raise FormatError(f"safetensors entry {e.name!r}: size does not match its shape")
                    yield container.Item(e.name, raw, dtype, tuple(e.shape), resolve(codec, dtype, raw.size),
                                         {"source_offset": e.begin})

            room = container.room_for(((e.name, tuple(e.shape)) for e in layout.entries), layout.metadata)
            return container.write(dst, items(), metadata=layout.metadata, source=source, threads=threads,
                                   overwrite=overwrite, progress=progress, header_room=room)
        finally:
            view = None  # release the map's export before closing it
            if isinstance(mm, mmap.mmap):
                try:
                    mm.close()
                except BufferError:  # a view still alive; the map closes when it dies
                    pass


def unpack(box, dst, threads: int = 0, overwrite: bool = False, progress=None) -> None:
    """Write the original .safetensors file back from an opened Container, byte for byte
    (checked against the original file's checksum before the output gets its name)."""
    source = box.header.get("source")
    if not source or source.get("kind") != "safetensors":
        raise FormatError(f"{box.path} was not packed from a .safetensors file")
    try:
        regions = [(int(g["offset"]), base64.b64decode(g["data"])) for g in source["gaps"]]
        regions += [(int(box.entry(n)["source_offset"]), n) for n in box.keys()]
        preamble = base64.b64decode(source["preamble"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{box.path}: malformed source description ({exc!r})") from None
    regions.sort(key=lambda r: r[0])
    threads = resolve_threads(threads)
    digest = hasher()
    with atomic_write(dst, overwrite) as out:
        out.write(preamble)
        digest.update(preamble)
        pos = len(preamble)
        # decode a window of tensors in parallel, write them in file order
        window = max(1, 2 * threads)
        for w in range(0, len(regions), window):
            group = regions[w : w + window]
            datas = pmap(lambda r: r[1] if isinstance(r[1], bytes) else box.get_raw(r[1], 1), group, threads)
            for (offset, _), data in zip(group, datas):
                if offset != pos:
                    raise FormatError(f"{box.path}: source regions do not tile the original file")
                out.write(data)
                digest.update(data)
                pos += len(data)
                if progress:
                    progress(len(data))
        if pos != source.get("size") or f"{digest.intdigest():016x}" != source.get("xxh3"):
            raise ChecksumError(f"{box.path}: unpacked file does not match the original's checksum")
