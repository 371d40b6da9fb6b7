"""Golden files: bytes written by format version 1 must keep decoding to the same values."""

from pathlib import Path

import numpy as np
import pytest

import nzip
from golden.make_golden import CODECS, golden_inputs
from helpers import same_bits
from nzip import codecs

HERE = Path(__file__).parent / "golden"


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_golden_frames(codec):
    frame = (HERE / f"v1_{codec}.nzf").read_bytes()
    assert same_bits(codecs.decode(frame), golden_inputs()["bf16"].contiguous())


def test_golden_numpy_frame():
    assert same_bits(codecs.decode((HERE / "v1_np_f16_ans.nzf").read_bytes()), golden_inputs()["np_f16"])


def test_golden_container():
    data = golden_inputs()
    with nzip.open(HERE / "v1_container.nz") as box:
        assert box.metadata() == {"golden": "v1"}
        assert sorted(box.keys()) == ["bf16", "f32", "i64"]
        for k in box.keys():
            assert same_bits(box.get_tensor(k), data[k].contiguous()), k
        box.verify()


def test_encoder_is_deterministic():
    """Not a format promise, but what makes golden files reproducible: same input, same bytes."""
    x = golden_inputs()["bf16"]
    for codec, params in CODECS.items():
        assert codecs.encode(x, codec, threads=1, **params) == codecs.encode(x, codec, threads=2, **params)


def test_golden_nested_and_incremental_checkpoints():
    """A nested state dict (JSON tree) and a checkpoint of references into it."""
    from golden.make_golden import golden_state

    for name, step in (("v1_nested.nz", 1), ("v1_incremental.nz", 2)):
        want, got = golden_state(step), nzip.load(HERE / name)
        assert got["step"] == step and got["optim"]["groups"] == want["optim"]["groups"]
        assert list(got["optim"]["state"]) == [0]
        for a, b in ((got["model"]["w"], want["model"]["w"]), (got["model"]["b"], want["model"]["b"]),
                     (got["optim"]["state"][0]["m"], want["optim"]["state"][0]["m"])):
            assert same_bits(a, b)
    with nzip.open(HERE / "v1_incremental.nz") as box:
        assert box.is_ref("model.w") and not box.is_ref("model.b")
        box.verify()


def test_golden_scenes():
    import numpy as np

    from golden.make_golden import golden_scene
    from nzip.scenes.codec import decode_scene

    scene = golden_scene()
    exact = decode_scene(HERE / "v1_scene_lossless.nzs")
    medium = decode_scene(HERE / "v1_scene_medium.nzs")
    expected = np.load(HERE / "v1_scene_medium_decoded.npz")
    tiered = decode_scene(HERE / "v2_scene_medium.nzs")  # format 2: importance tiers
    expected_tiered = np.load(HERE / "v2_scene_medium_decoded.npz")
    rotation_tiered = decode_scene(HERE / "v3_scene_medium.nzs")  # format 3: rotation tiers
    expected_rotation_tiered = np.load(HERE / "v3_scene_medium_decoded.npz")
    refined = decode_scene(HERE / "v4_scene_medium.nzs")  # format 4: positions refined by opacity
    expected_refined = np.load(HERE / "v4_scene_medium_decoded.npz")
    columns = decode_scene(HERE / "v5_scene_medium.nzs")  # format 5: level arrays as columns
    expected_columns = np.load(HERE / "v5_scene_medium_decoded.npz")
    codebooks = decode_scene(HERE / "v8_scene_medium_codebooks.nzs")  # format 8: geometry codebooks
    expected_codebooks = np.load(HERE / "v8_scene_medium_codebooks_decoded.npz")
    for field in ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations"):
        assert np.array_equal(getattr(exact, field), getattr(scene, field)), field
        assert np.array_equal(getattr(medium, field), expected[field]), field
        assert np.array_equal(getattr(tiered, field), expected_tiered[field]), field
        assert np.array_equal(getattr(rotation_tiered, field), expected_rotation_tiered[field]), field
        assert np.array_equal(getattr(refined, field), expected_refined[field]), field
        assert np.array_equal(getattr(columns, field), expected_columns[field]), field
        assert np.array_equal(getattr(codebooks, field), expected_codebooks[field]), field


@pytest.mark.parametrize("version", [6, 7])
def test_golden_spz_scenes(version):
    """Formats 6 (adaptive tables) and 7 (context mixing): the lossless .nzs of scenes on
    .spz's grids decode to those scenes, bit for bit (the sorted one as the same set of
    Gaussians)."""
    from golden.make_golden import golden_spz_scene
    from nzip.formats.container import Container
    from nzip.scenes.codec import decode_scene

    from helpers import same_scene_bits, scene_rows

    with Container(HERE / f"v{version}_scene_spz2_lossless.nzs") as box:
        assert box.metadata()["nzip_scene"] == version
    assert same_scene_bits(decode_scene(HERE / f"v{version}_scene_spz2_lossless.nzs"), golden_spz_scene(2))
    sorted_back, scene = decode_scene(HERE / f"v{version}_scene_spz3_sorted.nzs"), golden_spz_scene(3)
    assert np.array_equal(scene_rows(sorted_back), scene_rows(scene))
    assert not np.array_equal(sorted_back.positions, scene.positions)  # it did sort them


def test_golden_lossy_frames():
    """Decoding today gives exactly the pixels and values decoded when the files were made."""
    import importlib.util

    import numpy as np

    from nzip import codecs

    expected = np.load(HERE / "v1_lossy_decoded.npz")
    gear = codecs.decode((HERE / "v1_gear.nzf").read_bytes())
    assert np.array_equal(gear.numpy(), expected["gear"])
    if importlib.util.find_spec("compressai") is None:
        return  # the learned codecs need compressai (see the README)
    assert np.array_equal(codecs.decode((HERE / "v1_image.nzf").read_bytes()), expected["image"])
    assert np.array_equal(codecs.decode((HERE / "v1_feature.nzf").read_bytes()).numpy(), expected["feature"])


def test_golden_pc_frame():
    """Decoding a pc frame depends on the exact integer model it names: this pins both the
    frame layout and the shipped MNIST model (a new model must ship under a new name)."""
    pytest.importorskip("constriction")
    digits = np.load(HERE / "v1_pc_digits.npy")
    assert np.array_equal(codecs.decode((HERE / "v1_pc.nzf").read_bytes()), digits)
