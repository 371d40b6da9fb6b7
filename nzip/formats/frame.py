"""Frame v1: one encoded object, self-describing.

    offset  size  field
    0       8     magic b"\\x89NZF\\r\\n\\x1a\\n"  (PNG-style: catches text-mode mangling)
    8       2     format version, u16 LE (1)
    10      2     flags, u16 LE (0; readers refuse unknown flags)
    12      4     header length H, u32 LE
    16      H     header, UTF-8 JSON: {"codec": {...config}, "dtype", "shape", "kind",
                  "payload_size"}
    16+H    P     payload (codec-specific)
    16+H+P  8     XXH3-64 of every byte before it, u64 LE

This module knows bytes only; it never imports a codec.
"""

from __future__ import annotations

import json
import struct

from ..errors import ChecksumError, FormatError, TruncatedError, VersionError
from .checksum import hasher, xxh3

MAGIC = b"\x89NZF\r\n\x1a\n"
VERSION = 1
_FIXED = struct.Struct("<8sHHI")
MAX_HEADER = 1 << 20


def pack(header: dict, payload) -> bytes:
    """payload: bytes-like, or a list of bytes-like parts (joined here, copied once)."""
    parts = payload if isinstance(payload, list) else [payload]
    size = sum(memoryview(p).nbytes for p in parts)
    h = json.dumps({**header, "payload_size": size}, separators=(",", ":")).encode()
    parts = [_FIXED.pack(MAGIC, VERSION, 0, len(h)), h, *parts]
    digest = hasher()
    for part in parts:
        digest.update(part)
    return b"".join([*parts, struct.pack("<Q", digest.intdigest())])


def checksum_ok(frame) -> bool:
    """The frame's bytes match its stored checksum (needs at least its fixed part)."""
    mv = memoryview(frame).cast("B") if not isinstance(frame, memoryview) else frame.cast("B")
    if len(mv) < _FIXED.size + 8:
        return False
    (stored,) = struct.unpack_from("<Q", mv, len(mv) - 8)
    return xxh3(mv[:-8]) == stored


def unpack(frame, verify: bool = True) -> tuple[dict, memoryview]:
    """Validate a frame and return (header, payload view). Checks magic, version, length
    and checksum before anything else is trusted. verify=False leaves the checksum to the
    caller (decode_many checks it while the payloads decode: its decoders are bounds-checked,
    so unchecked bytes cannot make them misbehave, and nothing is returned before it holds)."""
    mv = memoryview(frame).cast("B") if not isinstance(frame, memoryview) else frame.cast("B")
    if len(mv) < len(MAGIC) or bytes(mv[: len(MAGIC)]) != MAGIC:
        raise FormatError("not an nzip frame (wrong magic)")
    if len(mv) < _FIXED.size + 8:
        raise TruncatedError(f"nzip frame truncated: {len(mv)} bytes")
    _, version, flags, hlen = _FIXED.unpack_from(mv)
    if version > VERSION:
        raise VersionError(f"nzip frame version {version} is newer than this nzip reads ({VERSION})")
    if version < 1 or flags != 0:
        raise FormatError(f"nzip frame has unknown version {version} / flags {flags:#x}")
    if hlen > MAX_HEADER or _FIXED.size + hlen + 8 > len(mv):
        raise TruncatedError("nzip frame truncated inside its header")
    if verify and not checksum_ok(mv):
        raise ChecksumError("nzip frame checksum mismatch: the data is corrupted or truncated")
    try:
        header = json.loads(bytes(mv[_FIXED.size : _FIXED.size + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"nzip frame header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FormatError("nzip frame header is not a JSON object")
    payload = mv[_FIXED.size + hlen : len(mv) - 8]
    if header.get("payload_size") != len(payload):
        raise TruncatedError("nzip frame payload size does not match its header")
    return header, payload
