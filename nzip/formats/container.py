"""Container .nz v1: many encoded tensors, header first, random access (safetensors-like).

    offset  size  field
    0       8     magic b"\\x89NZC\\r\\n\\x1a\\n"
    8       2     format version, u16 LE (1)
    10      2     flags, u16 LE (0)
    12      4     reserved, zero
    16      8     header length H, u64 LE
    24      8     XXH3-64 of the header bytes
    32      H     header, UTF-8 JSON (below)
    ...           zero padding to a multiple of 64: the data section starts there
    D       S     data section: one payload per tensor, each starting 64-byte aligned
    D+S     16    trailer: b"NZCEND\\0\\0" and u64 LE file size

Header: {"tensors": [{"name", "dtype", "shape", "codec": {config}, "offset" (from D),
"size", "xxh3": payload checksum, "raw_xxh128": XXH3-128 of the decoded bytes (files
before 0.2: "raw_xxh3", 64-bit)}, ...], "metadata": {...}, "data_size": S, "data_xxh3":
checksum of the whole data section, "source": optional description of the original file
(see formats.safetensors), "tree": optional nested state dict (see formats.tree),
"requires": optional list of features a reader must know (below)}. The JSON may end in
blanks: the writer leaves room for the header before the data and fills what is left.

A tensor of an incremental checkpoint may be a reference instead of a payload: {"name",
"dtype", "shape", "raw_xxh128", "ref": {"file": path relative to this file, "name"}}; the
header then lists "refs" in "requires". Reading one checks the base's bytes against
raw_xxh128, so a base that changed is an error, never a silent substitution.

Opening reads the header only (and checks its checksum); a tensor's payload is checked
when it is read; `verify()` checks everything, including the whole-data checksum.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..codecs import get as get_codec
from ..codecs.auto import resolve
from ..codecs.api import check_shape, decode_jobs, decode_on_device, decode_raw, to_device
from ..codecs.registry import Codec, resolve_threads
from ..codecs.scratch import fresh_buffers, worth_prefaulting
from ..dtypes import DType, from_bytes
from ..errors import ChecksumError, FormatError, NzipError, TruncatedError, VersionError
from ..parallel import pmap, pmap_balanced
from .atomic import atomic_write
from .checksum import content_hash, hasher, raw_hash_matches, xxh3

MAGIC = b"\x89NZC\r\n\x1a\n"
END = b"NZCEND\0\0"
VERSION = 1
_FIXED = struct.Struct("<8sHHIQQ")
ALIGN = 64
MAX_HEADER = 1 << 30
KNOWN_REQUIREMENTS = {"refs"}  # header features a reader must understand
MAX_REF_DEPTH = 64
WINDOW_BYTES = 256 << 20  # raw bytes encoded per parallel batch: bounds memory use


@dataclass
class Item:
    """One tensor to write: its raw little-endian bytes, dtype and shape."""

    name: str
    raw: np.ndarray  # flat uint8
    dtype: DType
    shape: tuple[int, ...]
    codec: Codec | str | dict  # "auto" is resolved on the worker thread (it samples the data)
    extra: dict[str, Any] | None = None  # kept in the tensor's header entry


def _pad(n: int) -> int:
    return -n % ALIGN


class BaseIndex:
    """The tensors of a base container by content (dtype, shape, XXH3-128 of the bytes),
    for incremental saves: a tensor found there is stored as a reference to it."""

    def __init__(self, base: str | os.PathLike, target: Path) -> None:
        base = Path(base)
        if base.resolve() == target.resolve():
            raise NzipError(f"base {base} is the file being written: save incrementally to a new path")
        with Container(base) as box:
            self.by_content = {(e["dtype"], tuple(e["shape"]), e["raw_xxh128"]): name
                               for name, e in box._entries.items() if "raw_xxh128" in e}
        self.file = os.path.relpath(base.resolve(), target.resolve().parent)

    def ref_for(self, it: Item, digest: str) -> dict | None:
        name = self.by_content.get((it.dtype.name, tuple(it.shape), digest))
        return None if name is None else {"file": self.file, "name": name}


def write(path: str | os.PathLike, items: Iterable[Item], metadata: dict | None = None,
          source: dict | None = None, threads: int = 0, overwrite: bool = False,
          progress: Callable[[int], None] | None = None, tree: dict | None = None,
          base: str | os.PathLike | None = None, header_room: int = 4096) -> dict:
    """Encode `items` (streamed: at most WINDOW_BYTES of raw data in memory at once) and
    write the container atomically. Returns the header. progress(n) gets raw bytes done.

    tree: a formats.tree description of a nested state dict. base: an earlier container;
    tensors with the same bytes there become references to it (the header then requires
    "refs"). The data goes straight to the output behind header_room bytes left for the
    header (room_for() estimates it); a header that outgrows its room moves the data once,
    a smaller one is padded with blanks."""
    threads = resolve_threads(threads)
    path = Path(path)
    index = BaseIndex(base, path) if base is not None else None
    entries: list[dict] = []
    names: set[str] = set()
    data_hash = hasher()
    room = header_room + (len(json.dumps(source, separators=(",", ":"))) if source else 0)
    data_start = _FIXED.size + room + _pad(_FIXED.size + room)
    with atomic_write(path, overwrite) as out:
        out.seek(data_start)
        offset = 0

        def encode(it: Item, th: int):
            digest = content_hash(it.raw)
            ref = index.ref_for(it, digest) if index else None
            if ref is not None:
                return digest, ref, None, None
            codec = resolve(it.codec, it.dtype, it.raw)
            return digest, None, codec, codec.encode_payload(it.raw, it.dtype, th)

        def flush(batch: list[Item]) -> None:
            nonlocal offset
            for it, (digest, ref, codec, payload) in zip(batch, pmap_balanced(encode, batch, threads,
                                                                               cost=lambda it: it.raw.size)):
                entry = {"name": it.name, "dtype": it.dtype.name, "shape": list(it.shape), "raw_xxh128": digest}
                if ref is not None:
                    entries.append({**entry, "ref": ref, **(it.extra or {})})
                else:
                    parts = payload if isinstance(payload, list) else [payload]
                    size = sum(memoryview(p).nbytes for p in parts)
                    part_hash = hasher()
                    for part in parts:
                        part_hash.update(part)
                    entries.append({**entry, "codec": codec.get_config(), "offset": offset, "size": size,
                                    "xxh3": f"{part_hash.intdigest():016x}", **(it.extra or {})})
                    for chunk in (*parts, b"\0" * _pad(size)):
                        out.write(chunk)
                        data_hash.update(chunk)
                    offset += size + _pad(size)
                if progress:
                    progress(it.raw.size)

        batch, batch_bytes = [], 0
        for it in items:
            if it.name in names:
                raise NzipError(f"duplicate tensor name {it.name!r}")
            names.add(it.name)
            if not isinstance(it.codec, str) or it.codec != "auto":
                it.codec = resolve(it.codec, it.dtype, 0)
                it.codec.check_dtype(it.dtype)
            batch.append(it)
            batch_bytes += it.raw.size
            if batch_bytes >= WINDOW_BYTES:
                flush(batch)
                batch, batch_bytes = [], 0
        flush(batch)

        header = {"tensors": entries, "metadata": metadata or {}, "data_size": offset,
                  "data_xxh3": f"{data_hash.intdigest():016x}"}
        if any("ref" in e for e in entries):
            header["requires"] = ["refs"]
        if tree is not None:
            header["tree"] = tree
        if source is not None:
            header["source"] = source
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        if _FIXED.size + len(hbytes) > data_start:  # no room: move the data back once
            new_start = _FIXED.size + len(hbytes) + _pad(_FIXED.size + len(hbytes))
            _move(out, data_start, new_start, offset)
            data_start = new_start
        hbytes += b" " * (data_start - _FIXED.size - len(hbytes))  # JSON allows trailing blanks
        out.seek(0)
        out.write(_FIXED.pack(MAGIC, VERSION, 0, 0, len(hbytes), xxh3(hbytes)))
        out.write(hbytes)
        out.seek(data_start + offset)
        size = data_start + offset + len(END) + 8
        out.write(END + struct.pack("<Q", size))
    return header


def room_for(names_and_shapes: Iterable[tuple[str, tuple]], *extra: Any) -> int:
    """Header bytes to leave for these tensors (and JSON-serialisable extras such as a tree
    or metadata): a little more than their entries take, so that the data rarely moves."""
    entry = 240  # dtype, codec config, offsets, checksums: measured 190-230 bytes
    size = sum(len(json.dumps(n)) + 4 * len(shape) + entry + 12 for n, shape in names_and_shapes)
    return 512 + size + sum(len(json.dumps(x, separators=(",", ":"))) for x in extra if x is not None)


def _move(f, src: int, dst: int, length: int, step: int = 16 << 20) -> None:
    """Move length bytes of f from src to a later dst, last chunk first (regions overlap)."""
    end = length
    while end > 0:
        start = max(0, end - step)
        f.seek(src + start)
        chunk = f.read(end - start)
        f.seek(dst + start)
        f.write(chunk)
        end = start


class Container:
    """A .nz file opened for lazy random access (memory-mapped)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            self._buf = memoryview(self._mm)
            self.header = self._read_header(size)
        except BaseException:
            self.close()
            raise
        self._entries = {e["name"]: e for e in self.header["tensors"]}
        self._bases: dict[str, Container] = {}
        self._depth = 0

    def _read_header(self, size: int) -> dict:
        buf = self._buf
        if size < len(MAGIC) or bytes(buf[: len(MAGIC)]) != MAGIC:
            raise FormatError(f"{self.path}: not an nzip container (wrong magic)")
        if size < _FIXED.size:
            raise TruncatedError(f"{self.path}: truncated before the end of its header")
        _, version, flags, _, hlen, hsum = _FIXED.unpack_from(buf)
        if version > VERSION:
            raise VersionError(f"{self.path}: container version {version} is newer than this nzip reads ({VERSION})")
        if version < 1 or flags:
            raise FormatError(f"{self.path}: unknown container version {version} / flags {flags:#x}")
        if hlen > MAX_HEADER or _FIXED.size + hlen > size:
            raise TruncatedError(f"{self.path}: truncated inside its header")
        hbytes = buf[_FIXED.size : _FIXED.size + hlen]
        if xxh3(hbytes) != hsum:
            raise ChecksumError(f"{self.path}: header checksum mismatch (corrupted)")
        try:
            header = json.loads(bytes(hbytes))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{self.path}: header is not JSON ({exc})") from None
        self.data_start = _FIXED.size + hlen + _pad(_FIXED.size + hlen)
        try:
            data_size = int(header["data_size"])
            tensors = header["tensors"]
            assert isinstance(tensors, list) and isinstance(header.get("metadata", {}), dict)
            unknown = set(header.get("requires", [])) - KNOWN_REQUIREMENTS
            if unknown:
                raise VersionError(f"{self.path}: needs features this nzip lacks: {', '.join(sorted(unknown))}")
            for e in tensors:
                check_shape(e["dtype"], e["shape"])
                if "ref" in e:
                    if not (isinstance(e["ref"].get("file"), str) and isinstance(e["ref"].get("name"), str)
                            and isinstance(e.get("raw_xxh128"), str)):
                        raise FormatError(f"{self.path}: tensor entry {e.get('name')!r} has a malformed reference")
                elif not (isinstance(e["name"], str) and 0 <= e["offset"] and 0 <= e["size"]
                          and e["offset"] + e["size"] <= data_size and isinstance(e["codec"], dict)):
                    raise FormatError(f"{self.path}: tensor entry {e.get('name')!r} is out of bounds")
        except (KeyError, TypeError, AssertionError, ValueError) as exc:
            if isinstance(exc, NzipError):
                raise
            raise FormatError(f"{self.path}: malformed header ({exc!r})") from None
        expected = self.data_start + data_size + len(END) + 8
        if size != expected:
            raise TruncatedError(f"{self.path}: file is {size} bytes, its header says {expected} (truncated or padded)")
        if bytes(buf[size - 16 : size - 8]) != END or struct.unpack_from("<Q", buf, size - 8)[0] != size:
            raise FormatError(f"{self.path}: bad trailer")
        return header

    # -- mapping-like access -----------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def metadata(self) -> dict:
        return self.header.get("metadata", {})

    def entry(self, name: str) -> dict:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def is_ref(self, name: str) -> bool:
        return "ref" in self.entry(name)

    def tree(self) -> dict | None:
        """The nested state dict's description (formats.tree), if it was not flat."""
        return self.header.get("tree")

    def _base(self, name: str) -> tuple["Container", str]:
        """(the container a referenced tensor lives in, its name there)."""
        ref = self.entry(name)["ref"]
        if self._depth >= MAX_REF_DEPTH:
            raise FormatError(f"{self.path}: references nested deeper than {MAX_REF_DEPTH} (a cycle?)")
        box = self._bases.get(ref["file"])
        if box is None:
            target = (self.path.parent / ref["file"]).resolve()
            if not target.exists():
                raise FormatError(f"{self.path}: tensor {name!r} refers to {ref['file']}, which is missing "
                                  "(incremental checkpoints need their base)")
            box = Container(target)
            box._depth = self._depth + 1
            self._bases[ref["file"]] = box
        return box, ref["name"]

    def _get_ref(self, name: str, threads: int, out: np.ndarray | None) -> np.ndarray:
        box, there = self._base(name)
        raw = box.get_raw(there, threads, out=out)
        e = self.entry(name)
        theirs = box.entry(there)
        if (theirs["dtype"], theirs["shape"]) != (e["dtype"], e["shape"]) or not raw_hash_matches(raw, e["raw_xxh128"]):
            raise ChecksumError(f"{self.path}: tensor {name!r} refers to {there!r} in {box.path}, "
                                "whose bytes have changed since this checkpoint was saved")
        return raw

    def payload(self, name: str) -> memoryview:
        e = self.entry(name)
        if "ref" in e:
            raise FormatError(f"{self.path}: tensor {name!r} is a reference to {e['ref']['file']}, not stored here")
        start = self.data_start + e["offset"]
        return self._buf[start : start + e["size"]]

    def checked_payload(self, name: str) -> memoryview:
        """The tensor's payload, after checking its checksum."""
        payload = self.payload(name)
        if f"{xxh3(payload):016x}" != self.entry(name)["xxh3"]:
            raise ChecksumError(f"{self.path}: tensor {name!r} is corrupted (payload checksum mismatch)")
        return payload

    def get_raw(self, name: str, threads: int = 0, verify: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor's bytes, decoded (into `out` when given); the payload checksum is
        always checked, and with verify=True the decoded bytes are checked against the
        original's checksum too."""
        e = self.entry(name)
        if "ref" in e:
            return self._get_ref(name, threads, out)
        payload = self.checked_payload(name)
        dtype, _, count = check_shape(e["dtype"], e["shape"])
        try:
            return decode_raw(get_codec(e["codec"]), payload, dtype, count, threads,
                              (e.get("raw_xxh128") or e.get("raw_xxh3")) if verify else None, out=out)
        except NzipError as exc:
            raise type(exc)(f"{self.path}: tensor {name!r}: {exc}") from None

    def get_tensor(self, name: str, device=None, framework: str = "torch", threads: int = 0):
        """Decode one tensor: a torch tensor (framework="torch", optionally on `device`) or
        a numpy array (framework="numpy"; bf16/fp8 come back as same-width uint views)."""
        e = self.entry(name)
        dtype, shape, count = check_shape(e["dtype"], e["shape"])
        if framework == "torch" and "ref" not in e:
            on_device = decode_on_device(get_codec(e["codec"]), self.checked_payload(name), dtype, count, shape, device)
            if on_device is not None:
                return on_device
        return from_bytes(self.get_raw(name, threads), dtype, shape, framework, device)

    def __getitem__(self, name: str):
        return self.get_tensor(name)

    def tensors(self, keys: Iterable[str] | None = None, device=None, framework: str = "torch",
                threads: int = 0) -> dict:
        """Decode many tensors in parallel (threads=0: every core), each into fresh memory
        of its own, 64-byte aligned (scratch.fresh_buffers)."""
        names = list(self._entries if keys is None else keys)
        if framework == "torch" and device is not None and _is_gpu(device):
            return self._tensors_on_gpu(names, device, threads)
        shapes = {n: check_shape(self.entry(n)["dtype"], self.entry(n)["shape"]) for n in names}
        sizes = [shapes[n][2] * shapes[n][0].itemsize for n in names]
        outs = dict(zip(names, fresh_buffers(sizes, ALIGN)))
        fresh = worth_prefaulting(sum(sizes), sum(self._entries[n].get("size", 0) for n in names))
        threads = resolve_threads(threads)

        def job(n):
            return get_codec(self.entry(n)["codec"]), self.checked_payload(n), shapes[n][0], shapes[n][2], outs[n]

        refs = [n for n in names if self.is_ref(n)]
        for n in refs:  # incremental checkpoints: these live in the base
            self._get_ref(n, threads, outs[n])
        # checksums on the pool, then one batched decode
        jobs = pmap(job, [n for n in names if not self.is_ref(n)], threads, cost=lambda n: self._entries[n]["size"])
        try:
            decode_jobs(jobs, threads, fresh)
        except NzipError as exc:  # a batch cannot tell which tensor: find it one by one
            for n in names:
                self.get_raw(n, 1)
            raise exc
        return {n: from_bytes(outs[n], shapes[n][0], shapes[n][1], framework, device) for n in names}

    def _tensors_on_gpu(self, names: list[str], device, threads: int) -> dict:
        """Tensors whose codec decodes on the GPU travel compressed and are decoded there,
        one launch per codec; the others are decoded on the CPU and copied."""
        resident: dict[int, tuple[Codec, list, list]] = {}
        on_cpu = []
        for n in names:
            e = self.entry(n)
            dtype, shape, count = check_shape(e["dtype"], e["shape"])
            codec = None if "ref" in e else get_codec(e["codec"])
            r = to_device(codec, self.checked_payload(n), dtype, count, device) if count and codec else None
            if r is None:
                on_cpu.append(n)
            else:
                group = resident.setdefault(id(codec), (codec, [], []))
                group[1].append(n)
                group[2].append(r)
        out = {n: t.to(device) for n, t in self.tensors(on_cpu, None, "torch", threads).items()} if on_cpu else {}
        for codec, group_names, residents in resident.values():
            for n, flat in zip(group_names, codec.decode_on_device(residents)):
                out[n] = flat.view(tuple(self.entry(n)["shape"]))
        return {n: out[n] for n in names}

    def verify(self, threads: int = 0) -> None:
        """Check every checksum and decode every tensor (references: in their base);
        raises naming the first bad one."""
        e_data = self._buf[self.data_start : self.data_start + self.header["data_size"]]
        data_ok = f"{xxh3(e_data):016x}" == self.header.get("data_xxh3")
        pmap_balanced(lambda n, th: self.get_raw(n, th, verify=True), self.keys(), resolve_threads(threads),
                      cost=lambda n: self._entries[n].get("size", 0))
        if not data_ok:
            raise ChecksumError(f"{self.path}: data section checksum mismatch (padding between tensors corrupted)")

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        for box in getattr(self, "_bases", {}).values():
            box.close()
        buf = getattr(self, "_buf", None)
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass
            self._buf = None
        mm = getattr(self, "_mm", None)
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:  # decoded arrays never view the map, but be safe
                pass
        self._file.close()

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_gpu(device) -> bool:
    import torch

    return torch.device(device).type != "cpu"
