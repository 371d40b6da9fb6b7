"""Bad input gets a clear nzip error (a ValueError), never a crash, hang or huge allocation."""

import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from nzip import codecs
from nzip.errors import (ChecksumError, CorruptDataError, FormatError, NzipError, TruncatedError,
                         UnknownCodecError, VersionError)
from nzip.formats import frame as frame_format
from nzip.formats.checksum import xxh3

CODECS = ["raw", "zstd", "planes", "ans", "dfloat11"]


def weights(n=20_000):
    return (torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)


def reframe(frame: bytes, edit) -> bytes:
    """Rewrite a frame's header or payload and re-seal it with a valid checksum, so that
    the codec's own validation (not the checksum) has to catch the problem."""
    header, payload = frame_format.unpack(frame)
    header, payload = edit(dict(header), bytes(payload))
    header.pop("payload_size", None)
    return frame_format.pack(header, payload)


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_frames(codec):
    frame = codecs.encode(weights(), codec)
    for cut in (0, 5, 16, 40, len(frame) // 2, len(frame) - 1):
        with pytest.raises(NzipError):
            codecs.decode(frame[:cut])


@pytest.mark.parametrize("codec", CODECS)
def test_every_flipped_bit_region_is_detected(codec):
    frame = bytearray(codecs.encode(weights(), codec))
    rng = np.random.default_rng(0)
    for pos in list(rng.integers(0, len(frame), 40)) + [0, 9, 13, len(frame) - 1]:
        bad = bytearray(frame)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(NzipError):
            codecs.decode(bytes(bad))


def test_wrong_magic_and_foreign_data():
    with pytest.raises(FormatError, match="wrong magic"):
        codecs.decode(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(FormatError):
        codecs.decode(b"")
    with pytest.raises(FormatError):
        codecs.decode(np.arange(10).tobytes())


def test_newer_version_is_refused():
    frame = bytearray(codecs.encode(weights(100), "zstd"))
    frame[8:10] = struct.pack("<H", 99)
    body = bytes(frame[:-8])
    with pytest.raises(VersionError, match="newer"):
        codecs.decode(body + struct.pack("<Q", xxh3(body)))


@pytest.mark.parametrize("codec", CODECS)
def test_payload_corruption_behind_a_valid_checksum(codec):
    """Forged frames (valid checksum, inconsistent payload) must still fail cleanly."""
    frame = codecs.encode(weights(), codec)
    rng = np.random.default_rng(1)
    for _ in range(30):
        def flip(h, p):
            p = bytearray(p)
            i = int(rng.integers(0, len(p)))
            p[i] ^= 1 << int(rng.integers(0, 8))
            return h, bytes(p)

        try:
            out = codecs.decode(reframe(frame, flip), verify=True)
        except NzipError:
            continue
        # a flip in raw bytes decodes "fine": verify's decoded checksum catches it
        pytest.fail(f"{codec}: corrupt payload decoded to {out!r}")


@pytest.mark.parametrize("codec", CODECS)
def test_absurd_shapes_do_not_allocate(codec):
    frame = codecs.encode(weights(1000), codec)
    for shape in ([1 << 40], [1 << 62, 1 << 62], [-1], ["x"], "12", [2] * 100):
        with pytest.raises(NzipError):
            codecs.decode(reframe(frame, lambda h, p: ({**h, "shape": shape}, p)))
    # plausible but wrong: more elements than the payload can hold
    with pytest.raises(NzipError):
        codecs.decode(reframe(frame, lambda h, p: ({**h, "shape": [10_000_000]}, p)))


def test_forged_sizes_commit_no_memory_in_decode_many(tmp_path):
    """decode_many allocates every output before the codecs check their payloads, and
    faults the pages in up front; a forged size must not make it touch them (it only does
    so when the output is a plausible multiple of the compressed input). Peak memory is
    measured in a fresh process."""
    frame = codecs.encode(np.zeros(1000, np.float32), "zstd")
    forged = reframe(frame, lambda h, p: ({**h, "shape": [1 << 28]}, p))  # 1 GiB from ~30 bytes
    path = tmp_path / "forged.nzf"
    path.write_bytes(forged)
    code = (
        "import resource, sys\n"
        "from nzip import codecs\n"
        "from nzip.errors import CorruptDataError\n"
        "frame = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    codecs.decode_many([frame])\n"
        "except CorruptDataError:\n"
        "    pass\n"
        "else:\n"
        "    sys.exit('decoded a forged frame')\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    grown_mib = int(subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True,
                                   text=True).stdout)
    assert grown_mib < 100


def test_header_lies_are_caught():
    frame = codecs.encode(weights(1000), "ans")
    with pytest.raises(UnknownCodecError):
        codecs.decode(reframe(frame, lambda h, p: ({**h, "codec": {"id": "nope"}}, p)))
    with pytest.raises(FormatError):
        codecs.decode(reframe(frame, lambda h, p: ({**h, "dtype": "float128"}, p)))
    with pytest.raises(NzipError):
        codecs.decode(reframe(frame, lambda h, p: ({**h, "dtype": "float32", "shape": [500]}, p)))
    with pytest.raises(FormatError):
        codecs.decode(reframe(frame, lambda h, p: ({**h, "kind": "jax"}, p)))
    lied = reframe(frame, lambda h, p: ({**h, "raw_xxh3": "0" * 16}, p))
    with pytest.raises(CorruptDataError, match="checksum of the original"):
        codecs.decode(lied, verify=True)
    codecs.decode(lied)  # plain decoding trusts the (valid) payload checksum
    # a header that is not JSON, behind a valid checksum
    body = frame_format._FIXED.pack(frame_format.MAGIC, 1, 0, 3) + b"{x}"
    with pytest.raises(FormatError, match="JSON"):
        codecs.decode(body + struct.pack("<Q", xxh3(body)))


def test_errors_are_value_errors():
    for cls in (ChecksumError, TruncatedError, FormatError):
        assert issubclass(cls, ValueError)


def test_containers_refuse_lossy_codecs(tmp_path):
    """save/pack/DCP store tensors bit-exact: a lossy codec is refused up front, instead of
    writing a file whose tensors then fail their checksums as if corrupted."""
    import torch

    import nzip
    from nzip.errors import BadParameterError

    for codec in ("gear", {"id": "gear", "bits": 8}):
        with pytest.raises(BadParameterError, match="lossy"):
            nzip.save({"w": torch.randn(64, 32)}, tmp_path / "lossy.nz", codec=codec)
        assert not (tmp_path / "lossy.nz").exists()
