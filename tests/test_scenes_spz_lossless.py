"""Lossless scenes on .spz's grids: spz's integers, context coded (nzip.scenes.spz_lossless)."""

from pathlib import Path

import numpy as np
import pytest

from nzip.cli import main as cli
from nzip.errors import ChecksumError, CorruptDataError, FormatError, TruncatedError
from nzip.scenes import read_scene
from nzip.scenes import spz_lossless
from nzip.scenes.codec import decode_scene, encode_scene
from nzip.scenes.spz import dequantize, quantize, read_spz

from helpers import same_scene_bits as same, scene_rows as as_rows


@pytest.fixture(scope="module")
def pod(scenes_dir):
    return scenes_dir / "pod_sh3_v2.spz"


def test_an_spz_scene_comes_back_bit_for_bit_in_fewer_bytes_than_its_spz(pod, tmp_path):
    scene = read_scene(pod)
    kept = encode_scene(scene, tmp_path / "a.nzs", level="lossless")
    back = decode_scene(tmp_path / "a.nzs")
    assert same(back, scene)
    assert kept["bytes"] < 0.70 * pod.stat().st_size  # the float bits took 2.1x, format 6 0.72x
    # any order: the same Gaussians, sorted, fewer bytes still: the 0.6x of the .spz
    loose = encode_scene(scene, tmp_path / "b.nzs", level="lossless", any_order=True)
    back = decode_scene(tmp_path / "b.nzs")
    assert np.array_equal(as_rows(back), as_rows(scene)) and not same(back, scene)
    assert loose["bytes"] <= 0.60 * pod.stat().st_size and loose["bytes"] < 0.9 * kept["bytes"]


def test_sorted_gaussians_render_the_same_but_where_they_tie_in_depth(pod):
    """Sorting keeps every Gaussian's bits; renders change only where two Gaussians lie at
    exactly the same depth (the file's order composites ties), which on a grid happens in
    views along its axes and diagonals. A patch of pod, 3 views each way."""
    from nzip.scenes.fidelity import fidelity, renders
    from nzip.scenes.render import orbit

    scene = read_scene(pod).subset(np.arange(6000))
    arrays, version, frac = spz_lossless.on_grid(scene)
    blob, layout = spz_lossless.encode(arrays, len(scene), scene.sh_degree, version, any_order=True)
    back = dequantize(spz_lossless.decode(blob, len(scene), scene.sh_degree, layout), len(scene), scene.sh_degree,
                      frac, version)
    assert np.array_equal(as_rows(back), as_rows(scene)) and not same(back, scene)
    cams = orbit(scene, 3, 96, 72)
    assert fidelity(renders(scene, cams), back, cams)["psnr"] > 90
    # cameras whose axes are not rational directions of the 1/4096 grid see no ties: the same
    # renders to float rounding (every view at the 100 dB cap)
    cams = orbit(scene, 3, 96, 72, phase=0.37)
    assert all(v["psnr"] == 100 for v in fidelity(renders(scene, cams), back, cams)["per_view"])


def test_a_version_4_file_with_v3_rotations_is_found_on_its_grid(scenes_dir):
    """biker.spz (v4) stores -0.0 components and, where two components tie, leaves out one
    that is not the largest: both must be reproduced for the grid to be exact."""
    scene = read_scene(scenes_dir / "biker.spz")
    arrays, version, frac = spz_lossless.on_grid(scene)
    assert (version, frac) == (3, 12)
    assert same(dequantize(arrays, len(scene), 0, frac, version), scene)
    blob, layout = spz_lossless.encode(arrays, len(scene), 0, version)
    assert all(np.array_equal(a, b) for a, b in zip(spz_lossless.decode(blob, len(scene), 0, layout), arrays))


def test_scenes_off_the_grid_keep_their_float_bits(pod, tmp_path):
    scene = read_scene(pod).subset(np.arange(3000))
    assert spz_lossless.on_grid(scene) is not None
    scene.scales[7, 1] = np.nextafter(scene.scales[7, 1], np.float32(1))  # one ulp off the grid
    assert spz_lossless.on_grid(scene) is None
    encode_scene(scene, tmp_path / "a.nzs", level="lossless")
    assert same(decode_scene(tmp_path / "a.nzs"), scene)
    from nzip.formats import container
    with container.Container(tmp_path / "a.nzs") as box:
        assert "spz" not in box.metadata()


def test_a_lossy_level_stores_a_grid_scene_exactly_where_that_is_smaller(pod, tmp_path):
    """pod at high: the lossy file (1.58 MB at 44.9 dB) is larger than the sorted lossless
    one (1.15 MB), which then takes its place; off the grid the lossy file stays."""
    from nzip.formats import container

    scene = read_scene(pod).subset(np.arange(4000))
    report = encode_scene(scene, tmp_path / "a.nzs", level="high", views=0)
    assert report["exact"] and report["level"] == "high"
    back = decode_scene(tmp_path / "a.nzs")
    assert np.array_equal(as_rows(back), as_rows(scene))
    with container.Container(tmp_path / "a.nzs") as box:
        assert box.metadata()["level"] == "high" and box.metadata()["spz"]["sorted"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    scene.scales[7, 1] = np.nextafter(scene.scales[7, 1], np.float32(1))  # one ulp off the grid
    lossy = encode_scene(scene, tmp_path / "b.nzs", level="high", views=0)
    assert not lossy["exact"] and lossy["bytes"] > report["bytes"]
    # where the lossy file is the smaller, it stays
    small = encode_scene(read_scene(pod).subset(np.arange(4000)), tmp_path / "c.nzs", level="low", views=0)
    assert not small["exact"] and small["bytes"] < report["bytes"]


def test_lossy_levels_keep_positions_on_their_own_grid_where_it_is_no_finer(pod, tmp_path):
    """pod's positions lie on 1/4096 steps, coarser than medium's cells: medium stores those
    points exactly (every decoded position is an original one) and in fewer bytes than the
    same scene moved a third of a step off its grid; low's cells are coarser, so it rounds."""
    from scipy.spatial import cKDTree

    scene = read_scene(pod).subset(np.arange(5000))
    report = encode_scene(scene, tmp_path / "a.nzs", level="medium", views=0)
    back = decode_scene(tmp_path / "a.nzs")
    assert not report["exact"]
    distance, _ = cKDTree(scene.positions).query(back.positions)
    assert len(back) == len(scene) and np.all(distance == 0)
    moved = scene.subset(np.arange(len(scene)))
    moved.positions = moved.positions + np.float32(1 / 4096 / 3)
    off = encode_scene(moved, tmp_path / "b.nzs", level="medium", views=0)
    assert report["parts"]["positions"] < 0.7 * off["parts"]["positions"]
    encode_scene(scene, tmp_path / "c.nzs", level="low", views=0)
    assert np.any(cKDTree(scene.positions).query(decode_scene(tmp_path / "c.nzs").positions)[0] > 0)


def test_unpack_to_spz_writes_the_same_arrays_back(pod, tmp_path):
    """v2 in, v2 out: the rotations are not moved onto v3's grid on the way back."""
    assert cli(["pack", str(pod), "-o", str(tmp_path / "a.nzs"), "--quality", "lossless", "-q"]) == 0
    assert cli(["unpack", str(tmp_path / "a.nzs"), "-o", str(tmp_path / "a.spz"), "-q"]) == 0
    assert same(read_spz(tmp_path / "a.spz"), read_spz(pod))
    assert cli(["pack", str(pod), "-o", str(tmp_path / "b.nzs"), "--any-order", "-q"]) == 1  # lossless only
    assert not (tmp_path / "b.nzs").exists()


def test_damaged_streams_are_refused(pod):
    scene = read_scene(pod).subset(np.arange(2000))
    arrays, version, frac = spz_lossless.on_grid(scene)
    blob, layout = spz_lossless.encode(arrays, len(scene), scene.sh_degree, version)
    for bad in (blob[:3], blob[: len(blob) // 2], blob[:8] + bytes(len(blob) - 8)):
        with pytest.raises(CorruptDataError):
            spz_lossless.decode(bad, len(scene), scene.sh_degree, layout)
    with pytest.raises(CorruptDataError, match="unknown coder"):
        spz_lossless.decode(blob, len(scene), scene.sh_degree, {**layout, "coder": "gzip"})
    with pytest.raises(CorruptDataError):  # format 7's streams read as format 6's
        spz_lossless.decode(blob, len(scene), scene.sh_degree, {**layout, "coder": "adaptive"})


def test_damaged_format_7_files_are_refused_with_clear_errors(tmp_path):
    """A format-7 .nzs cut short, with a flipped bit in its streams or without its magic."""
    data = (Path(__file__).parent / "golden" / "v7_scene_spz2_lossless.nzs").read_bytes()
    flipped = bytearray(data)
    flipped[-len(data) // 3] ^= 0x08
    for name, blob, error in (("short", data[: len(data) // 2], TruncatedError), ("flip", bytes(flipped), ChecksumError),
                              ("magic", b"XXXX" + data[4:], FormatError)):
        (tmp_path / f"{name}.nzs").write_bytes(blob)
        with pytest.raises(error):
            decode_scene(tmp_path / f"{name}.nzs")


def test_quantize_reproduces_what_it_decodes_to():
    """spz's own arrays survive dequantize -> quantize (the grid test relies on it); -0.0
    components of v3 rotations included."""
    rng = np.random.default_rng(0)
    from nzip.scenes import Scene
    q = rng.normal(size=(500, 4)).astype(np.float32)
    q[::7, 2] = 0
    scene = Scene(positions=rng.normal(size=(500, 3)).astype(np.float32), sh_dc=rng.normal(size=(500, 3)).astype(np.float32),
                  sh_rest=rng.normal(0, 0.2, (500, 8, 3)).astype(np.float32), opacity=rng.normal(size=500).astype(np.float32),
                  scales=rng.normal(-4, 1, (500, 3)).astype(np.float32), rotations=q)
    for version in (2, 3):
        arrays = quantize(scene, version, 12)
        again = quantize(dequantize(arrays, 500, 2, 12, version), version, 12)
        assert all(np.array_equal(a, b) for a, b in zip(arrays, again)), version
