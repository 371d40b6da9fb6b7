"""The .nz container: save/load, lazy access, exact safetensors repacking, corruption."""

import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import nzip
from helpers import same_bits, special_values
from nzip.errors import ChecksumError, FormatError, NzipError, TruncatedError, VersionError
from nzip.formats import container, safetensors


def state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "w.bf16": (torch.randn(300, 200, generator=g) * 0.02).to(torch.bfloat16),
        "w.f32": torch.randn(64, 64, generator=g),
        "w.f16": torch.randn(1000, generator=g).half(),
        "ids": torch.arange(5000),
        "mask": torch.rand(77, generator=g) > 0.5,
        "scalar": torch.tensor(3.0),
        "empty": torch.empty(0, 4),
        "specials": special_values(torch.float32, 2000),
        "fp8": special_values(torch.float8_e4m3fn, 3000),
    }


@pytest.mark.parametrize("codec", ["auto", "zstd", "planes", "ans"])
def test_save_load_roundtrip(tmp_path, codec):
    sd = state_dict()
    path = tmp_path / "ckpt.nz"
    nzip.save(sd, path, codec=codec, metadata={"step": 7, "note": "hello"})
    back = nzip.load(path)
    assert list(back) == list(sd)
    for k in sd:
        assert same_bits(sd[k], back[k]), k
    with nzip.open(path) as box:
        assert box.metadata() == {"step": 7, "note": "hello"}
        assert set(box.keys()) == set(sd) and len(box) == len(sd) and "ids" in box
        assert same_bits(box.get_tensor("w.f32"), sd["w.f32"])
        assert isinstance(box.get_tensor("ids", framework="numpy"), np.ndarray)
        box.verify(threads=2)
    sub = nzip.load(path, keys=["ids"], threads=1)
    assert list(sub) == ["ids"]


def test_auto_picks_by_dtype(tmp_path):
    path = tmp_path / "a.nz"
    nzip.save(state_dict(), path)
    with nzip.open(path) as box:
        ids = {n: box.entry(n)["codec"]["id"] for n in box.keys()}
    assert ids["w.bf16"] == "ans" and ids["w.f32"] == "planes" and ids["ids"] == "zstd" and ids["scalar"] == "raw"


def make_safetensors(path, with_metadata=True):
    sd = {k: v for k, v in state_dict().items() if k not in ("fp8",)}
    save_file(sd, str(path), metadata={"format": "pt"} if with_metadata else None)
    return sd


def test_safetensors_exact_roundtrip_with_gaps(tmp_path):
    src = tmp_path / "m.safetensors"
    make_safetensors(src)
    # add odd padding inside the header and trailing bytes: unpack must keep them too
    raw = src.read_bytes()
    (hlen,) = struct.unpack_from("<Q", raw)
    header = raw[8 : 8 + hlen] + b"    "
    data = raw[8 + hlen :] + b"TRAILING"
    src.write_bytes(struct.pack("<Q", len(header)) + header + data)
    safetensors.pack(src, tmp_path / "m.nz", threads=2)
    with container.Container(tmp_path / "m.nz") as box:
        safetensors.unpack(box, tmp_path / "back.safetensors", threads=2)
        box.verify()
    assert (tmp_path / "back.safetensors").read_bytes() == src.read_bytes()


def test_minilm_exact_roundtrip_and_size(tmp_path, minilm_path):
    dst = tmp_path / "minilm.nz"
    safetensors.pack(minilm_path, dst)
    assert dst.stat().st_size < 0.85 * minilm_path.stat().st_size
    with container.Container(dst) as box:
        safetensors.unpack(box, tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == minilm_path.read_bytes()


def test_outputs_are_atomic_and_not_overwritten(tmp_path):
    path = tmp_path / "x.nz"
    path.write_bytes(b"precious")
    with pytest.raises(NzipError, match="already exists"):
        nzip.save({"a": torch.ones(3)}, path, overwrite=False)
    assert path.read_bytes() == b"precious"

    def exploding():
        yield container.Item("a", np.zeros(8, np.uint8), nzip.dtypes.DTYPES["uint8"], (8,), nzip.codecs.get("raw"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        container.write(path, exploding(), overwrite=True)
    assert path.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["x.nz"]  # no temporary left behind


def packed(tmp_path) -> bytes:
    path = tmp_path / "c.nz"
    nzip.save(state_dict(), path)
    return path.read_bytes()


def test_truncated_and_foreign_containers(tmp_path):
    good = packed(tmp_path)
    bad = tmp_path / "bad.nz"
    for cut in (0, 4, 20, 100, len(good) // 2, len(good) - 1):
        bad.write_bytes(good[:cut])
        with pytest.raises(NzipError):
            container.Container(bad)
    bad.write_bytes(b"GIF89a" + good[6:])
    with pytest.raises(FormatError, match="wrong magic"):
        container.Container(bad)
    bad.write_bytes(good + b"\0")
    with pytest.raises(TruncatedError):
        container.Container(bad)
    v = bytearray(good)
    v[8:10] = struct.pack("<H", 2)
    bad.write_bytes(bytes(v))
    with pytest.raises(VersionError):
        container.Container(bad)


def test_flipped_bits_are_found_and_named(tmp_path):
    good = packed(tmp_path)
    path = tmp_path / "flip.nz"
    with container.Container(tmp_path / "c.nz") as box:
        start = box.data_start
        entries = box.header["tensors"]
    rng = np.random.default_rng(0)
    for _ in range(25):
        pos = int(rng.integers(0, len(good)))
        v = bytearray(good)
        v[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(v))
        with pytest.raises(NzipError) as info:
            with container.Container(path) as box:
                box.verify()
        hit = [e["name"] for e in entries if start + e["offset"] <= pos < start + e["offset"] + e["size"]]
        if hit:
            assert repr(hit[0]) in str(info.value)


def test_absurd_header_entries(tmp_path):
    good = packed(tmp_path)
    (hlen,) = struct.unpack_from("<Q", good, 16)
    header = json.loads(good[32 : 32 + hlen])

    def rewrite(edit):
        h = json.loads(json.dumps(header))
        edit(h)
        hb = json.dumps(h).encode()
        from nzip.formats.checksum import xxh3

        data = good[32 + hlen + (-(32 + hlen) % 64) : -16]
        body = container._FIXED.pack(container.MAGIC, 1, 0, 0, len(hb), xxh3(hb)) + hb + b"\0" * (-(32 + len(hb)) % 64) + data
        p = tmp_path / "forged.nz"
        p.write_bytes(body + container.END + struct.pack("<Q", len(body) + 16))
        return p

    def big_shape(h):
        h["tensors"][0]["shape"] = [1 << 50]

    def out_of_range(h):
        h["tensors"][0]["offset"] = h["data_size"] * 2

    for edit in (big_shape, out_of_range):
        with pytest.raises(NzipError):
            with container.Container(rewrite(edit)) as box:
                box.verify()
    p = rewrite(lambda h: h["tensors"][1]["shape"].append(1000))
    with container.Container(p) as box:
        with pytest.raises(NzipError, match=repr(header["tensors"][1]["name"])):
            box.get_tensor(header["tensors"][1]["name"])


def test_unpack_refuses_non_safetensors_source(tmp_path):
    nzip.save({"a": torch.ones(3)}, tmp_path / "s.nz")
    with container.Container(tmp_path / "s.nz") as box:
        with pytest.raises(FormatError, match="not packed from a .safetensors"):
            safetensors.unpack(box, tmp_path / "x.safetensors")


def test_bad_safetensors_input(tmp_path):
    p = tmp_path / "bad.safetensors"
    for blob in (b"", b"\x10\0\0\0\0\0\0\0{}", struct.pack("<Q", 2) + b"[]",
                 struct.pack("<Q", 60) + b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,160]}}'):
        p.write_bytes(blob)
        with pytest.raises(NzipError):
            safetensors.pack(p, tmp_path / "bad.nz", overwrite=True)
        assert not (tmp_path / "bad.nz").exists()


def test_unpack_checks_the_original_checksum(tmp_path):
    """A container whose record of the original file disagrees with what it unpacks to:
    unpack refuses, and no output is left under the final name."""
    from nzip.formats.checksum import xxh3

    src = tmp_path / "m.safetensors"
    make_safetensors(src)
    safetensors.pack(src, tmp_path / "m.nz")
    good = (tmp_path / "m.nz").read_bytes()
    (hlen,) = struct.unpack_from("<Q", good, 16)
    header = json.loads(good[32 : 32 + hlen])
    header["source"]["xxh3"] = "0" * 16
    hb = json.dumps(header).encode()
    data = good[32 + hlen + (-(32 + hlen) % 64) : -16]
    body = container._FIXED.pack(container.MAGIC, 1, 0, 0, len(hb), xxh3(hb)) + hb + b"\0" * (-(32 + len(hb)) % 64) + data
    forged = tmp_path / "forged.nz"
    forged.write_bytes(body + container.END + struct.pack("<Q", len(body) + 16))
    with container.Container(forged) as box:
        with pytest.raises(ChecksumError, match="original"):
            safetensors.unpack(box, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_outputs_get_the_usual_permissions(tmp_path):
    """Temporary files start private (0600); the finished output has what open() would give."""
    import os
    import stat

    from nzip.formats.atomic import atomic_dir, atomic_write

    umask = os.umask(0)
    os.umask(umask)
    with atomic_write(tmp_path / "f.bin") as f:
        f.write(b"x")
    with atomic_dir(tmp_path / "d") as d:
        (d / "a").write_bytes(b"y")
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask
