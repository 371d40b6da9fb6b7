"""Scene files: INRIA .ply and Niantic .spz (v2, v3, v4), on the real scenes in ../shared."""

import gzip
import struct

import numpy as np
import pytest

from nzip.errors import FormatError, TruncatedError, VersionError
from nzip.scenes import Scene, read_scene, write_scene
from nzip.scenes.spz import read_spz, write_spz

INRIA_PLYS = ["v3dg_donut_fused.ply", "guitar_decoded_inria.ply", "biker_decoded_inria.ply",
              "gsplat_alti_sh3.ply", "try_iter7000_sh3.ply"]


def unit(q):
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("name", INRIA_PLYS)
def test_ply_round_trip_is_byte_identical(scenes_dir, tmp_path, name):
    scene = read_scene(scenes_dir / name)
    assert len(scene) > 1000 and scene.sh_degree in (0, 3)
    scene.check_finite()
    write_scene(scene, tmp_path / name)
    assert (tmp_path / name).read_bytes() == (scenes_dir / name).read_bytes()


def test_sh3_layout_is_channel_major_in_the_ply(scenes_dir):
    """f_rest[c * 15 + k] is coefficient k of colour c (the README's re-layout of gsplat's npz)."""
    scene = read_scene(scenes_dir / "gsplat_alti_sh3.ply")
    raw = np.fromfile(scenes_dir / "gsplat_alti_sh3.ply", np.uint8)
    body = raw[raw.tobytes().find(b"end_header\n") + 11 :].view("<f4").reshape(len(scene), 62)
    f_rest = body[:, 9:54]
    assert np.array_equal(scene.sh_rest[:, 4, 2], f_rest[:, 2 * 15 + 4])
    assert np.array_equal(scene.sh_rest[:, 14, 0], f_rest[:, 14])


def test_spz_v4_matches_the_independently_decoded_ply(scenes_dir):
    """biker.spz (v4) and biker_decoded_inria.ply come from the same source (their README):
    positions within the fixed-point step, rotations, colours and opacity agree."""
    a = read_scene(scenes_dir / "biker.spz")
    b = read_scene(scenes_dir / "biker_decoded_inria.ply")
    assert len(a) == len(b) == 152746 and a.sh_degree == 0
    assert np.abs(a.positions - b.positions).max() <= 2.1e-4
    assert np.abs((unit(a.rotations) * unit(b.rotations)).sum(axis=1)).min() >= 0.9999990
    assert np.abs(a.sh_dc - b.sh_dc).max() <= 0.0132
    inside = b.scales > -10  # .spz clamps log scales at -10
    assert np.abs(a.scales - b.scales)[inside].max() <= 0.032
    assert np.abs(a.opacity - b.opacity)[np.abs(b.opacity) < 6].max() <= 1e-4


def test_spz_v2_sh3_reads(scenes_dir):
    scene = read_scene(scenes_dir / "pod_sh3_v2.spz")
    assert len(scene) == 101407 and scene.sh_degree == 3
    scene.check_finite()
    assert np.abs(np.linalg.norm(scene.rotations, axis=1) - 1).max() < 1e-2  # v2 rounds x, y, z to 8 bits
    assert np.abs(scene.sh_rest).max() <= 1.0


@pytest.mark.parametrize("version", [2, 3, 4])
def test_spz_write_read_within_its_quantisation(scenes_dir, tmp_path, version):
    scene = read_scene(scenes_dir / "gsplat_alti_sh3.ply")
    write_spz(scene, tmp_path / "s.spz", version=version)
    back = read_spz(tmp_path / "s.spz")
    assert len(back) == len(scene) and back.sh_degree == 3
    assert np.abs(back.positions - scene.positions).max() <= 0.5 / 4096 + 1e-6
    colour_step = 1 / (0.15 * 255)
    inside = np.abs(scene.sh_dc) < 127 * colour_step
    assert np.abs(back.sh_dc - scene.sh_dc)[inside].max() <= colour_step / 2 + 1e-5
    dot = np.abs((unit(back.rotations) * unit(scene.rotations)).sum(axis=1))
    assert dot.min() >= (0.99 if version == 2 else 0.9995)
    # SH: degree 1 on a 5-bit grid (step 8/128), the rest on 4 bits (16/128)
    err = np.abs(back.sh_rest - scene.sh_rest)
    fits = np.abs(scene.sh_rest) < 0.9
    # (rounded to 8 bits, then to the grid, as the reference encoder does)
    assert err[:, :3][fits[:, :3]].max() <= 4.5 / 128 + 1e-6 and err[:, 3:][fits[:, 3:]].max() <= 8.5 / 128 + 1e-6
    # the SH sign flips of the coordinate change cancel on the way back
    big = np.abs(scene.sh_rest) > 0.1
    assert big.sum() > 100 and np.array_equal(np.sign(back.sh_rest[big]), np.sign(scene.sh_rest[big]))


def test_spz_reencodes_exactly(scenes_dir, tmp_path):
    """A scene read from .spz is on .spz's grid: writing it again gives the same values."""
    for name, version in (("pod_sh3_v2.spz", 2), ("biker.spz", 4)):
        first = read_spz(scenes_dir / name)
        write_spz(first, tmp_path / name, version=version)
        again = read_spz(tmp_path / name)
        for field in ("positions", "sh_dc", "sh_rest", "opacity", "scales"):
            assert np.array_equal(getattr(first, field), getattr(again, field)), (name, field)
        assert np.abs((unit(first.rotations) * unit(again.rotations)).sum(axis=1)).min() > 0.99999


# -- bad input ------------------------------------------------------------------------------

def ply_bytes(props: list[str], n: int, body: bytes | None = None, fmt: str = "binary_little_endian") -> bytes:
    head = f"ply\nformat {fmt} 1.0\nelement vertex {n}\n" + "".join(f"property float {p}\n" for p in props)
    return (head + "end_header\n").encode() + (body if body is not None else bytes(4 * len(props) * n))


FULL = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
        "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("data, error, match", [
    (ply_bytes(FULL[:-1], 10), FormatError, "lacks"),
    (ply_bytes(FULL, 10, bytes(100)), TruncatedError, "truncated"),
    (ply_bytes(FULL, 0), FormatError, "no Gaussians"),
    (ply_bytes(FULL, 10, fmt="ascii"), FormatError, "binary_little_endian"),
    (ply_bytes(FULL + ["f_rest_0", "f_rest_1"], 10), FormatError, "SH degree"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty list uchar int idx\nend_header\n",
     FormatError, "list"),
    (b"PK\x03\x04 not a ply", FormatError, "not a .ply"),
])
def test_bad_ply_files_get_clear_errors(tmp_path, data, error, match):
    (tmp_path / "bad.ply").write_bytes(data)
    with pytest.raises(error, match=match):
        read_scene(tmp_path / "bad.ply")


def test_compressed_ply_is_refused_clearly(scenes_dir):
    with pytest.raises(FormatError, match="compressed"):
        read_scene(scenes_dir / "guitar.compressed.ply")


def test_nan_in_a_scene_is_found(scenes_dir, tmp_path):
    scene = read_scene(scenes_dir / "v3dg_donut_fused.ply")
    scene.scales[17, 1] = np.nan
    with pytest.raises(FormatError, match="scales.*Gaussian 17"):
        scene.check_finite()
    with pytest.raises(FormatError, match="not finite"):
        write_spz(scene, tmp_path / "x.spz")
    assert not (tmp_path / "x.spz").exists()


def test_bad_spz_files_get_clear_errors(scenes_dir, tmp_path):
    good4 = (scenes_dir / "biker.spz").read_bytes()
    cases = {
        "truncated-v4": (good4[: len(good4) // 2], TruncatedError),
        "not-spz": (b"hello world" * 10, FormatError),
        "truncated-gzip": ((scenes_dir / "pod_sh3_v2.spz").read_bytes()[:5000], TruncatedError),
        "version-9": (gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 9, 10, 0, 12, 0, 0)), VersionError),
        "zero": (gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 2, 0, 0, 12, 0, 0)), FormatError),
        "short-body": (gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 3, 1000, 3, 12, 0, 0) + bytes(100)),
                       TruncatedError),
    }
    for name, (data, error) in cases.items():
        (tmp_path / f"{name}.spz").write_bytes(data)
        with pytest.raises(error):
            read_scene(tmp_path / f"{name}.spz")


def test_scene_shapes_are_checked():
    n = 4
    ok = dict(positions=np.zeros((n, 3), np.float32), sh_dc=np.zeros((n, 3), np.float32),
              sh_rest=np.zeros((n, 15, 3), np.float32), opacity=np.zeros(n, np.float32),
              scales=np.zeros((n, 3), np.float32), rotations=np.zeros((n, 4), np.float32))
    assert Scene(**ok).sh_degree == 3
    with pytest.raises(FormatError, match="rotations"):
        Scene(**{**ok, "rotations": np.zeros((n, 3), np.float32)})
    with pytest.raises(FormatError, match="SH degree"):
        Scene(**{**ok, "sh_rest": np.zeros((n, 7, 3), np.float32)})
