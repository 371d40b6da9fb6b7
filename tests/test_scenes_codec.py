"""The scene codec (.nzs), the reference renderer and the fidelity measure."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nzip.errors import BadParameterError, ChecksumError, FormatError, TruncatedError
from nzip.scenes import Scene, read_scene, write_scene
from nzip.scenes.codec import decode_scene, encode_scene
from nzip.scenes.fidelity import fidelity, psnr, renders, ssim
from nzip.scenes.quantize import morton, unmorton
from nzip.scenes.render import Camera, look_at, orbit, render, sh_colour

SMALL = dict(views=4, width=96, height=72)


def cams_for(scene):
    return orbit(scene, SMALL["views"], SMALL["width"], SMALL["height"])


@pytest.fixture(scope="module")
def donut(scenes_dir):
    return read_scene(scenes_dir / "v3dg_donut_fused.ply")


@pytest.fixture(scope="module")
def sh3(scenes_dir):
    return read_scene(scenes_dir / "try_iter7000_sh3.ply")


# -- renderer -------------------------------------------------------------------------------

def one_gaussian(z=5.0, colour=(1.0, 0.0, 0.0), opacity=3.0, scale=-1.0, x=0.0):
    rgb = (np.asarray(colour, np.float32) - 0.5) / 0.28209479177387814
    return Scene(positions=np.array([[x, 0, z]], np.float32), sh_dc=rgb[None], sh_rest=np.zeros((1, 0, 3), np.float32),
                 opacity=np.array([opacity], np.float32), scales=np.full((1, 3), scale, np.float32),
                 rotations=np.array([[1, 0, 0, 0]], np.float32))


def camera(width=64, height=48):
    return Camera(np.eye(3), np.zeros(3), 50.0, 50.0, width / 2, height / 2, width, height)


def test_a_single_gaussian_peaks_at_its_projected_centre():
    img = render(one_gaussian(), camera())
    alpha = 1 / (1 + math.exp(-3.0))
    # the centre sits on a pixel corner (32, 24): the four pixels around it are the brightest
    peak = img[23:25, 31:33, 0]
    assert torch.allclose(peak, peak[0, 0].expand_as(peak), atol=1e-6)
    assert float(img[..., 0].max()) == pytest.approx(float(peak[0, 0]))
    assert 0.9 * alpha < float(peak[0, 0]) <= alpha
    assert float(img[..., 1:].abs().max()) < 1e-6 and float(img[0, 0, 0]) < 1e-3


def test_front_gaussian_hides_the_one_behind():
    a, b = one_gaussian(z=5, colour=(1, 0, 0), opacity=8), one_gaussian(z=9, colour=(0, 0, 1), opacity=8)
    both = Scene(*(np.concatenate([getattr(b, f), getattr(a, f)]) for f in
                   ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations")))
    img = render(both, camera())[24, 32]
    assert img[0] > 0.95 and img[2] < 0.02  # alpha capped at 0.99: a hint of blue at most


def test_gaussians_tied_in_depth_composite_in_the_files_order():
    """Many Gaussians at one depth (a red and a blue one, 50 times over, so that an unstable
    sort would mix them): the first in the file is in front, as in 3DGS's and gsplat's
    stable radix sorts."""
    red, blue = one_gaussian(colour=(1, 0, 0), opacity=8), one_gaussian(colour=(0, 0, 1), opacity=8)
    fields = ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations")
    for first, second, channel in ((red, blue, 0), (blue, red, 2)):
        scene = Scene(*(np.concatenate([getattr(first, f)] + [getattr(g, f) for g in (second, first) * 50])
                        for f in fields))
        img = render(scene, camera())[24, 32]
        assert img[channel] > 0.95 and img[2 - channel] < 0.02


def test_sh_degree_one_varies_with_direction():
    dc = torch.zeros(2, 3)
    rest = torch.zeros(2, 3, 3)
    rest[:, 2, 0] = 1.0  # the x-term of degree 1 (its basis is -C1 * x)
    dirs = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])
    c = sh_colour(dc, rest, dirs)
    assert float(c[0, 0]) == pytest.approx(0.5 - 0.4886025119029199, abs=1e-6)
    assert float(c[1, 0]) == pytest.approx(0.5 + 0.4886025119029199, abs=1e-6)


def test_orbit_cameras_look_at_the_scene(donut):
    cams = orbit(donut, 24, 64, 48)
    assert len(cams) == 24
    centre = np.median(donut.positions, axis=0)
    for cam in cams:
        p = cam.R @ centre + cam.t
        assert p[2] > 0 and abs(cam.fx * p[0] / p[2]) < 1e-3 and abs(cam.fy * p[1] / p[2]) < 1e-3


def test_identical_scenes_are_100_db_and_psnr_ssim_behave():
    x = torch.rand(40, 50, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(x, x) == 100.0 and ssim(x, x) == pytest.approx(1.0)
    y = (x + 0.05).clamp(0, 1)
    assert 20 < psnr(x, y) < 30 and ssim(x, y) < 1
    # float rounding (1e-7) is not better than no error at all: both are 100 dB
    assert psnr(x, x + 1e-7) == 100.0 and psnr(x, x + 2e-5) < 100
    # near-identical bright images: float32 variances rounded this to 1.0000023
    g = torch.Generator().manual_seed(0)
    bright = torch.rand(64, 64, 3, generator=g) * 0.1 + 0.85
    assert all(ssim(bright, bright + 1e-5 * torch.randn(64, 64, 3, generator=g)) <= 1 for _ in range(20))
    cam = look_at(np.array([0.0, 0, -5]), np.zeros(3), np.array([0.0, -1, 0]), 32, 24, 1.0)
    assert cam.R.shape == (3, 3)


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
                    reason="needs a CUDA GPU and gsplat (runs on the device machine)")
@pytest.mark.parametrize("name", ["donut", "sh3"])
def test_renderer_matches_gsplat(name, request):
    """The issue's validation: >= 45 dB against gsplat's CUDA rasteriser on the same cameras."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from validate_renderer import compare

    row = compare(request.getfixturevalue(name), views=24, width=256, height=192)
    assert row["psnr"] >= 45 and row["psnr_min"] >= 40, row


def test_morton_round_trip():
    q = np.random.default_rng(0).integers(0, 1 << 21, (1000, 3)).astype(np.uint64)
    assert np.array_equal(unmorton(morton(q)), q)
    assert morton(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint64)).tolist() == [1, 2, 4]


# -- codec ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["donut", "sh3"])
def test_levels_trade_size_for_fidelity(name, request, tmp_path):
    scene = request.getfixturevalue(name)
    cams = cams_for(scene)
    sizes, quality = {}, {}
    for level in ("low", "compact", "medium", "high"):
        report = encode_scene(scene, tmp_path / f"{level}.nzs", level=level)
        back = decode_scene(tmp_path / f"{level}.nzs")
        back.check_finite()
        assert back.sh_degree == scene.sh_degree and report["kept"] == len(back) <= len(scene)
        sizes[level] = report["bytes"]
        quality[level] = fidelity(scene, back, cams)["psnr"]
    assert sizes["low"] < sizes["compact"] < sizes["medium"] < sizes["high"]
    # compact's fidelity depends on the scene: its 24 renders and second tier up beat
    # medium on sh3 (48.48 dB against 48.04), while on the donut what those renders barely
    # see, and compact drops, these views do see (low 41.04, compact 41.07, medium 49.86)
    assert quality["low"] < quality["medium"] < quality["high"] and quality["compact"] < quality["high"], quality
    assert quality["compact"] > quality["low"] - 0.5, quality
    assert quality["high"] > 40 and quality["medium"] > 33


def test_importance_tiers_buy_fidelity(sh3, tmp_path, monkeypatch):
    """Tiers (finer steps for opaque, large Gaussians, finer rotations for opaque, elongated
    ones, coarser for the rest) render far better for a few more bytes than one grid for all."""
    from nzip.scenes import codec

    cams = cams_for(sh3)
    result = {}
    for tiers in (1, 7):
        monkeypatch.setitem(codec.LEVELS, "medium", {**codec.LEVELS["medium"], "tiers": tiers})
        report = encode_scene(sh3, tmp_path / f"t{tiers}.nzs", level="medium")
        result[tiers] = report["bytes"], fidelity(sh3, decode_scene(tmp_path / f"t{tiers}.nzs"), cams)["psnr"]
    # measured: one grid 102416 B at 43.39 dB, tiers 112784 B at 47.11 dB
    assert result[7][0] < 1.15 * result[1][0] and result[7][1] > result[1][1] + 2, result


def test_weighted_kmeans_minimises_the_weighted_error():
    from nzip.scenes.quantize import kmeans

    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    w = torch.tensor([1.0, 1.0, 2.0])
    assert torch.allclose(kmeans(x, 1, weights=w), torch.tensor([[5.25, 0.0]]))  # (0 + 1 + 20) / 4
    assert torch.allclose(kmeans(x, 1), torch.tensor([[11 / 3, 0.0]]))


def test_sh_codebooks_weighted_by_importance_buy_fidelity(sh3, tmp_path, monkeypatch):
    """The SH codebooks' k-means weighs each Gaussian by its share of a render's squared
    error, (alpha x size)^2: at the same bytes, far closer than all weighed alike."""
    from nzip.scenes import codec

    cams = cams_for(sh3)
    weighted = encode_scene(sh3, tmp_path / "w.nzs", level="medium", views=0)
    plain_vq = codec.residual_vq
    monkeypatch.setattr(codec, "residual_vq", lambda x, stages, seed, weights: plain_vq(x, stages, seed))
    plain = encode_scene(sh3, tmp_path / "p.nzs", level="medium", views=0)
    a = fidelity(sh3, decode_scene(tmp_path / "w.nzs"), cams)["psnr"]
    b = fidelity(sh3, decode_scene(tmp_path / "p.nzs"), cams)["psnr"]
    # measured: 47.93 -> 48.60 dB here; on the bench orbit gsplat_alti 48.4 -> 57.5 dB
    assert weighted["bytes"] < 1.01 * plain["bytes"] and a > b + 0.5, (a, b)


def test_rotation_tiers_follow_elongation_not_size():
    """Two Gaussians alike in alpha x size: the elongated one gets the finer rotation grid,
    the round one (whose rotation draws nothing) the same as a small round one."""
    from nzip.scenes.codec import _rotation_tiers, _tiers

    opacity = np.zeros(3, np.float32)
    scales = np.log(np.array([[1.0, 1.0, 1.0], [0.05, 1.0, 1.0], [0.5, 0.5, 0.5]], np.float32))
    assert _tiers(opacity, scales, 7)[0] == _tiers(opacity, scales, 7)[1]
    rt = _rotation_tiers(opacity, scales, 7)
    assert rt[1] > rt[0] == rt[2]  # round: no rotation importance, whatever the size


def test_level_columns_round_trip_and_take_differences_where_they_pay():
    """Format 5's column layout restores every level exactly, negative differences included;
    channels that move together are stored as differences, independent ones as themselves."""
    from nzip.scenes.codec import _columns, _tier_part
    from nzip.scenes.quantize import unzigzag, zigzag

    rng = np.random.default_rng(3)
    d = np.arange(-300, 300)
    assert np.array_equal(unzigzag(zigzag(d)), d) and zigzag(d).min() == 0
    grey = rng.integers(0, 400, 5000)
    levels = np.stack([grey, grey + rng.integers(-2, 3, 5000), rng.integers(0, 400, 5000)], axis=1)
    predictors, items, _ = _columns("dc.3", levels)
    assert predictors[:2] == [0, 1] and predictors[2] == 0, predictors
    arrays = {it.name: np.frombuffer(it.raw, np.dtype(it.dtype.name)).reshape(it.shape) for it in items}
    assert np.array_equal(_tier_part(arrays, "dc.3", 3, {"dc.3": predictors}), levels)
    with pytest.raises(ValueError):  # a column can only be a difference from an earlier one
        _tier_part(arrays, "dc.3", 3, {"dc.3": [0, 3, 0]})


def test_forged_column_layouts_are_refused(tmp_path):
    """A file (valid checksums) whose "columns" metadata or column arrays do not fit."""
    from nzip.formats import container
    from nzip.scenes.codec import _item

    golden = Path(__file__).parent / "golden" / "v5_scene_medium.nzs"
    with container.Container(golden) as box:
        meta, t = box.metadata(), box.tensors(framework="numpy")
    assert meta["columns"]["dc.3"] == [0, 1, 2]
    for columns, arrays in (({**meta["columns"], "dc.3": [0, 3, 0]}, t), ({**meta["columns"], "dc.3": [0, 1]}, t),
                            (meta["columns"], {k: v for k, v in t.items() if k != "dc.3.c1"}),
                            (meta["columns"], {**t, "dc.3.c2": t["dc.3.c2"][:-1]}), ([1, 2], t)):
        container.write(tmp_path / "forged.nzs", [_item(k, v) for k, v in arrays.items()],
                        metadata={**meta, "columns": columns}, overwrite=True)
        with pytest.raises(FormatError, match="inconsistent"):
            decode_scene(tmp_path / "forged.nzs")


def shell_scene(inner=50, shell=600, seed=0):
    """Opaque Gaussians tiling a unit sphere around smaller ones inside it."""
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(shell, 3))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    pos = np.concatenate([out, rng.uniform(-0.3, 0.3, (inner, 3))]).astype(np.float32)
    n = len(pos)
    scales = np.full((n, 3), np.log(0.15), np.float32)
    scales[shell:] = np.log(0.08)
    return Scene(positions=pos, sh_dc=rng.normal(0, 0.5, (n, 3)).astype(np.float32), sh_rest=np.zeros((n, 0, 3), np.float32),
                 opacity=np.full(n, 6.0, np.float32), scales=scales,
                 rotations=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)))


def test_renders_see_nothing_inside_a_closed_shell():
    """visibility: the Gaussians inside an opaque shell weigh ~nothing in renders, so they
    get a tier below the one alpha x size gives them (at most one: _seen_factor's clip)."""
    from nzip.scenes.codec import _rotation_tiers, _tiers
    from nzip.scenes.visibility import visibility

    scene = shell_scene()
    seen = visibility(scene, views=8, size=(96, 72))
    shell, inner = seen[:600], seen[600:]
    assert np.median(shell) > 0 and inner.max() < 0.05 * np.median(shell), (np.median(shell), inner.max())  # 0.017 measured
    by_size = _tiers(scene.opacity, scene.scales, 7).astype(int)
    by_renders = _tiers(scene.opacity, scene.scales, 7, seen).astype(int)
    assert by_size[600:].min() >= 1 and np.array_equal(by_renders[600:], by_size[600:] - 1), (by_size[600:], by_renders[600:])
    assert np.abs(by_renders - by_size).max() <= 1
    two_up = _tiers(scene.opacity, scene.scales, 7, seen, up=2).astype(int) - by_size  # compact's seen_up
    assert two_up.min() >= -1 and two_up.max() <= 2 and np.array_equal(two_up[600:], by_renders[600:] - by_size[600:])
    rotation_moved = _rotation_tiers(scene.opacity, scene.scales, 7, seen).astype(int) - _rotation_tiers(scene.opacity, scene.scales, 7)
    assert np.abs(rotation_moved).max() <= 1


def test_compact_drops_what_no_render_sees(tmp_path, monkeypatch):
    """compact leaves out the Gaussians that 24 renders of the original barely see: all of
    those inside a closed shell (and the few shell ones covered by their neighbours), none
    that shows; medium keeps them all. The renders stay as they were without the drop."""
    from nzip.scenes import codec
    from nzip.scenes.visibility import visibility

    scene = shell_scene(shell=1500)
    seen = visibility(scene, views=24)
    limit = codec.LEVELS["compact"]["hidden"]
    assert seen[1500:].max() < limit and (seen[:1500] >= limit).mean() > 0.9  # all inside hidden, 3-4% of the shell
    cams = orbit(scene, 8, 96, 72, elevations=(25, -25))
    targets = renders(scene, cams)
    result = {}
    for level, hidden in (("compact", True), ("compact", False), ("medium", False)):
        if not hidden:
            monkeypatch.setitem(codec.LEVELS, "compact", {**codec.LEVELS["compact"], "hidden": 0})
        report = encode_scene(scene, tmp_path / "x.nzs", level=level, overwrite=True)
        back = decode_scene(tmp_path / "x.nzs")
        radius = np.linalg.norm(back.positions, axis=1)
        result[level, hidden] = report["kept"], int((radius < 0.6).sum()), fidelity(targets, back, cams)["psnr"]
    assert result["compact", True][:2] == (int((seen >= limit).sum()), 0), result
    assert result["compact", False][:2] == result["medium", False][:2] == (len(scene), 50), result
    assert result["compact", True][2] > result["compact", False][2] - 0.3, result


def test_tiers_from_renders_buy_fidelity(donut, tmp_path):
    """Tiers moved by renders of the original (the default up to AUTO_MAX Gaussians)
    against alpha x size alone: about the same bytes, a closer render of the judge's views.
    Measured at the bench's 24 views at 256 x 192: donut +0.4 dB, guitar +2.3, biker +2.2."""
    cams = orbit(donut, 8, 160, 120)
    targets = renders(donut, cams)
    result = {}
    for views in (0, 12):
        report = encode_scene(donut, tmp_path / f"v{views}.nzs", level="medium", views=views)
        result[views] = report["bytes"], fidelity(targets, decode_scene(tmp_path / f"v{views}.nzs"), cams)["psnr"]
    # measured: 497488 B at 53.32 dB, 495056 B at 53.61 dB
    assert result[12][0] < 1.01 * result[0][0] and result[12][1] > result[0][1] + 0.1, result


def test_tiers_from_renders_are_stored_and_followed(donut, tmp_path):
    """encode_scene(views=N): the tiers come from renders (they differ from alpha x size's),
    are stored, and the decoder follows them: a file of the same format and size class."""
    from nzip.formats import container

    plain = encode_scene(donut, tmp_path / "v0.nzs", level="medium", views=0)
    seen = encode_scene(donut, tmp_path / "v8.nzs", level="medium", views=8)
    with container.Container(tmp_path / "v0.nzs") as a, container.Container(tmp_path / "v8.nzs") as b:
        assert "importance_views" not in a.metadata() and b.metadata()["importance_views"] == 8
        assert not np.array_equal(a.tensors(framework="numpy")["tier"], b.tensors(framework="numpy")["tier"])
    back = decode_scene(tmp_path / "v8.nzs")
    assert len(back) == seen["kept"] and abs(seen["bytes"] - plain["bytes"]) < 0.1 * plain["bytes"]
    assert fidelity(donut, back, cams_for(donut))["psnr"] > 33
    with pytest.raises(BadParameterError):
        encode_scene(donut, tmp_path / "x.nzs", views=-1)


def test_position_refinement_follows_opacity_exactly():
    """Refinement bits per axis from the stored opacity level (7 bits, all 3 from alpha 1/4):
    thresholds 127 x 2^-4, 2^-3, 2^-2 = 7.94, 15.9, 31.75; and log2(alpha) rounded up."""
    from nzip.scenes.codec import _floor_log2_alpha, _refinement

    levels = np.array([0, 7, 8, 15, 16, 31, 32, 127])
    assert _refinement(levels, 7, 3, 0.25).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert _refinement(levels, 7, 0, 0.25).tolist() == [0] * 8
    assert _floor_log2_alpha(np.array([127, 64, 63, 1, 0]), 7).tolist() == [0, 0, -1, -6, -7]


def test_opaque_gaussians_get_finer_positions(tmp_path):
    """Each decoded position lies within the cell its opacity earned: opaque ones within
    half a finest cell, faint ones within a cell 2^3 times as wide (and use that room)."""
    from scipy.spatial import cKDTree

    from nzip.scenes.codec import LEVELS, POSITION_ALPHA, _refinement

    rng = np.random.default_rng(4)
    n = 3000
    positions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    alpha = np.where(np.arange(n) % 2 == 0, 0.9, 0.02)  # every other one opaque
    scene = Scene(positions=positions, sh_dc=rng.normal(0, 1, (n, 3)).astype(np.float32),
                  sh_rest=np.zeros((n, 0, 3), np.float32), opacity=np.log(alpha / (1 - alpha)).astype(np.float32),
                  scales=np.full((n, 3), -4.0, np.float32), rotations=np.tile(np.float32([1, 0, 0, 0]), (n, 1)))
    encode_scene(scene, tmp_path / "x.nzs", level="medium")
    back = decode_scene(tmp_path / "x.nzs")
    cfg = LEVELS["medium"]
    match = cKDTree(positions).query(back.positions)[1]  # points lie far apart: no ambiguity
    assert len(set(match.tolist())) == n
    cell = (positions.max(axis=0) - positions.min(axis=0)) / 2.0 ** cfg["position_bits"]
    levels = np.rint(1 / (1 + np.exp(-back.opacity.astype(np.float64))) * ((1 << cfg["opacity_bits"]) - 1))
    earned = _refinement(levels, cfg["opacity_bits"], cfg["position_refine"], POSITION_ALPHA)
    err = np.abs(back.positions - positions[match]) / cell
    room = 2.0 ** (cfg["position_refine"] - earned)[:, None] / 2
    assert np.all(err <= room * (1 + 1e-3))
    opaque = alpha[match] > 0.5
    assert set(earned[opaque]) == {cfg["position_refine"]} and set(earned[~opaque]) == {0}
    assert err[~opaque].max() > 2 * err[opaque].max()


def test_tiers_that_disagree_with_their_arrays_are_refused(donut, tmp_path):
    """A forged file (valid checksums) whose tier array does not match the per-tier arrays."""
    from nzip.formats import container
    from nzip.scenes.codec import _item

    encode_scene(donut, tmp_path / "x.nzs", level="low")
    with container.Container(tmp_path / "x.nzs") as box:
        meta, t = box.metadata(), box.tensors(framework="numpy")
    for name, edit in (("tier", lambda a: np.full_like(a, 3)), ("tier", lambda a: np.full_like(a, 9)),
                       ("dc.3", lambda a: a[:-1]), ("rotation.tier", lambda a: np.full_like(a, 13)),
                       ("rotation.tier", lambda a: np.zeros_like(a)), ("rotation.tier", lambda a: a[:-1]),
                       ("rotation.small.3", lambda a: a[:-1]), ("positions.refine2", lambda a: a[:-1]),
                       ("opacity", lambda a: a[:-1]), ("opacity", lambda a: np.zeros_like(a))):
        arrays = {**t, name: edit(t[name])}
        container.write(tmp_path / "forged.nzs", [_item(k, v) for k, v in arrays.items()], metadata=meta, overwrite=True)
        with pytest.raises(FormatError, match="inconsistent"):
            decode_scene(tmp_path / "forged.nzs")


def test_codebooks_refined_against_renders_render_closer(sh3, tmp_path):
    """Refinement trains on its own cameras and must improve fidelity's, at the same indices."""
    from nzip.formats import container
    from nzip.scenes.refine import CHECKS, refine_codebooks, training_cameras

    encode_scene(sh3, tmp_path / "x.nzs", level="low")
    decoded = decode_scene(tmp_path / "x.nzs")
    with container.Container(tmp_path / "x.nzs") as box:
        t = box.tensors(framework="numpy")
    books = [t["rest.book0"].astype(np.float32)]
    indices = [t["rest.index0"]]
    judge = orbit(sh3, 8, 96, 72)
    assert not any(np.allclose(c.R, j.R) for c in training_cameras(sh3, 24, 96, 72) for j in judge)
    losses = []
    refined, kept = refine_codebooks(sh3, decoded, books, indices, steps=48, views=24, size=(96, 72), lr=2e-4,
                                     progress=lambda step, loss: losses.append(loss), validation_views=4)
    assert len(losses) == 48 and refined[0].shape == books[0].shape
    assert kept > 0 and kept % (48 // CHECKS) == 0  # the codebooks of a validation point
    after = Scene(decoded.positions, decoded.sh_dc, refined[0][indices[0].astype(np.int64)].reshape(decoded.sh_rest.shape),
                  decoded.opacity, decoded.scales, decoded.rotations)
    before_db, after_db = fidelity(sh3, decoded, judge)["psnr"], fidelity(sh3, after, judge)["psnr"]
    assert after_db > before_db + 0.15, (before_db, after_db)  # measured: 45.04 -> 45.34 dB


def test_refinement_that_renders_worse_is_not_kept(sh3, tmp_path):
    """Validation on held-out cameras: steps far too large wreck the codebooks, so the ones
    given come back (kept 0). (Good steps are kept: the test above.)"""
    from nzip.formats import container
    from nzip.scenes.refine import refine_codebooks, training_cameras, validation_cameras

    encode_scene(sh3, tmp_path / "x.nzs", level="low")
    decoded = decode_scene(tmp_path / "x.nzs")
    with container.Container(tmp_path / "x.nzs") as box:
        t = box.tensors(framework="numpy")
    books, indices = [t["rest.book0"].astype(np.float32)], [t["rest.index0"]]
    held_out = validation_cameras(sh3, 8, 96, 72)
    assert not any(np.allclose(c.R, v.R) for c in training_cameras(sh3, 24, 96, 72) + orbit(sh3, 24, 96, 72)
                   for v in held_out)
    losses = []
    wrecked, kept = refine_codebooks(sh3, decoded, books, indices, steps=8, views=24, size=(96, 72), lr=0.5,
                                     validation_views=4, progress=lambda step, loss: losses.append(loss))
    assert losses[-1] > 4 * losses[0]  # the steps did wreck them
    assert kept == 0 and np.array_equal(wrecked[0], books[0])


def test_encode_scene_refine_keeps_the_format(sh3, donut, tmp_path):
    plain = encode_scene(sh3, tmp_path / "plain.nzs", level="low")
    report = encode_scene(sh3, tmp_path / "refined.nzs", level="low", refine=2)
    assert abs(report["bytes"] - plain["bytes"]) < 0.02 * plain["bytes"]
    a, b = decode_scene(tmp_path / "plain.nzs"), decode_scene(tmp_path / "refined.nzs")
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.sh_dc, b.sh_dc)
    from nzip.formats import container

    with container.Container(tmp_path / "refined.nzs") as box:
        meta = box.metadata()
    assert meta["refined_steps"] == 2 and meta["refined_kept"] in (0, 1, 2)
    assert report["refined_kept"] == meta["refined_kept"] and plain["refined_kept"] is None
    assert np.array_equal(a.sh_rest, b.sh_rest) == (meta["refined_kept"] == 0)
    encode_scene(donut, tmp_path / "sh0.nzs", level="low", refine=2)  # SH degree 0: no codebooks, nothing to do
    with pytest.raises(BadParameterError, match="refine"):
        encode_scene(sh3, tmp_path / "bad.nzs", refine=-1)


def test_lossless_restores_every_bit(sh3, scenes_dir, tmp_path):
    encode_scene(sh3, tmp_path / "x.nzs", level="lossless")
    back = decode_scene(tmp_path / "x.nzs")
    for field in ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations", "normals"):
        assert np.array_equal(getattr(back, field).view(np.uint32), getattr(sh3, field).view(np.uint32)), field
    write_scene(back, tmp_path / "back.ply")
    assert (tmp_path / "back.ply").read_bytes() == (scenes_dir / "try_iter7000_sh3.ply").read_bytes()


def test_medium_prunes_only_what_is_never_drawn(donut, tmp_path):
    alpha = 1 / (1 + np.exp(-donut.opacity.astype(np.float64)))
    report = encode_scene(donut, tmp_path / "x.nzs", level="medium")
    assert report["kept"] == int((alpha >= 1 / 255).sum())


def test_bad_scene_input(donut, tmp_path):
    encode_scene(donut, tmp_path / "x.nzs", level="low")
    data = (tmp_path / "x.nzs").read_bytes()
    (tmp_path / "short.nzs").write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedError):
        decode_scene(tmp_path / "short.nzs")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    (tmp_path / "flip.nzs").write_bytes(bytes(flipped))
    with pytest.raises(ChecksumError):
        decode_scene(tmp_path / "flip.nzs")
    import nzip

    nzip.save({"w": torch.ones(3)}, tmp_path / "plain.nz")
    with pytest.raises(FormatError, match="not an nzip scene"):
        decode_scene(tmp_path / "plain.nz")
    broken = Scene(**{f: getattr(donut, f).copy() for f in ("positions", "sh_dc", "sh_rest", "opacity", "scales",
                                                           "rotations")})
    broken.positions[3, 0] = np.inf
    with pytest.raises(FormatError, match="positions"):
        encode_scene(broken, tmp_path / "nan.nzs")
    assert not (tmp_path / "nan.nzs").exists()
    with pytest.raises(Exception, match="level"):
        encode_scene(donut, tmp_path / "bad.nzs", level="extreme")


def test_cli_pack_unpack_and_eval(scenes_dir, tmp_path):
    from nzip.formats import container

    src = scenes_dir / "v3dg_donut_fused.ply"

    def nzip_cli(*args):
        return subprocess.run([sys.executable, "-m", "nzip.cli", *map(str, args)], capture_output=True, text=True)

    assert nzip_cli("pack", src, "-o", tmp_path / "d.nzs", "--quality", "high").returncode == 0
    assert nzip_cli("pack", src, "-o", tmp_path / "d.nzs").returncode == 1  # exists, no -f
    assert nzip_cli("unpack", tmp_path / "d.nzs", "-o", tmp_path / "d.spz").returncode == 0
    assert nzip_cli("unpack", tmp_path / "d.nzs", "-o", tmp_path / "d.ply").returncode == 0
    out = nzip_cli("scene-eval", src, tmp_path / "d.nzs", "--json", "--views", 4, "--size", "64x48",
                   "--png", tmp_path / "cmp.png")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["views"] == 4 and report["psnr"] > 35 and report["exact"] is False
    errors = report["attributes"]
    assert errors["matched"] == report["gaussians"][1] and 0 < errors["covariance"]["rms"] < 0.2
    same = json.loads(nzip_cli("scene-eval", src, src, "--json", "--views", 2, "--size", "32x24").stdout)
    assert same["exact"] is True and same["psnr"] == 100
    assert all(v["max"] == 0 for k, v in same["attributes"].items() if isinstance(v, dict))
    text = nzip_cli("scene-eval", src, tmp_path / "d.nzs", "--views", 2, "--size", "32x24").stdout
    assert "per attribute" in text and "covariance" in text
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_scene(tmp_path / "d.spz").sh_degree == 0
    bad = tmp_path / "empty.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nend_header\n")
    res = nzip_cli("pack", bad, "-o", tmp_path / "e.nzs")
    assert res.returncode == 1 and "error" in res.stderr and not (tmp_path / "e.nzs").exists()
    sh3 = scenes_dir / "try_iter7000_sh3.ply"
    res = nzip_cli("pack", sh3, "-o", tmp_path / "r.nzs", "--quality", "low", "--refine", 1, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert decode_scene(tmp_path / "r.nzs").sh_degree == 3
    res = nzip_cli("pack", tmp_path / "cmp.png", "-o", tmp_path / "i.nzi", "--refine", 5)
    assert res.returncode == 1 and "--refine" in res.stderr and not (tmp_path / "i.nzi").exists()
    res = nzip_cli("pack", src, "-o", tmp_path / "c.nzs", "--quality", "low", "--geometry", "codebooks",
                   "--geometry-stages", 2, "--views", 0)
    assert res.returncode == 0, res.stderr
    with container.Container(tmp_path / "c.nzs") as box:
        assert box.metadata()["scale_stages"] == 2
    res = nzip_cli("pack", src, "-o", tmp_path / "c2.nzs", "--geometry-stages", 2)
    assert res.returncode == 1 and "--geometry codebooks" in res.stderr and not (tmp_path / "c2.nzs").exists()


def test_geometry_codebooks_round_trip_and_more_stages_render_closer(sh3, tmp_path):
    """Scale and rotation as Compact 3DGS's residual codebooks (geometry="codebooks"): the
    file says so, the decoder follows it, each stage adds a codebook and brings the scene closer."""
    from nzip.formats import container
    from nzip.scenes.codec import GEOMETRY_CODEWORDS

    cams = cams_for(sh3)
    grids = encode_scene(sh3, tmp_path / "g.nzs", level="medium", views=0)
    psnr, size = {}, {}
    for stages in (1, 4):
        report = encode_scene(sh3, tmp_path / f"c{stages}.nzs", level="medium", views=0, geometry="codebooks",
                              geometry_stages=stages)
        with container.Container(tmp_path / f"c{stages}.nzs") as box:
            meta, names = box.metadata(), box.keys()
        assert meta["nzip_scene"] == 8 and meta["geometry"] == "codebooks"
        assert meta["scale_stages"] == meta["rotation_stages"] == stages
        assert f"scale.book{stages - 1}" in names and "rotation.largest" not in names and "scale.3" not in names
        back = decode_scene(tmp_path / f"c{stages}.nzs")
        back.check_finite()
        assert len(back) == report["kept"] == grids["kept"]
        assert np.allclose(np.linalg.norm(back.rotations, axis=1), 1, atol=1e-5)
        # each Gaussian's scales take one of at most 64^stages values (a sum of one codeword a stage)
        assert len(np.unique(back.scales, axis=0)) <= GEOMETRY_CODEWORDS ** stages
        psnr[stages], size[stages] = fidelity(sh3, back, cams)["psnr"], report["parts"]["scale"]
    assert size[1] < size[4] and psnr[1] + 3 < psnr[4], (size, psnr)
    assert grids["parts"]["scale"] + grids["parts"]["rotation"] < size[4] + report["parts"]["rotation"]


def test_geometry_codebooks_bad_options_and_forged_files(sh3, tmp_path):
    from nzip.formats import container
    from nzip.scenes.codec import _item

    for options in ({"geometry": "octree"}, {"geometry": "codebooks", "geometry_stages": 0},
                    {"geometry": "codebooks", "geometry_stages": 17}, {"geometry": "codebooks", "level": "lossless"}):
        with pytest.raises(BadParameterError, match="geometry"):
            encode_scene(sh3, tmp_path / "x.nzs", **{"level": "low", **options})
        assert not (tmp_path / "x.nzs").exists()
    encode_scene(sh3, tmp_path / "c.nzs", level="low", views=0, geometry="codebooks", geometry_stages=2)
    with container.Container(tmp_path / "c.nzs") as box:
        meta, t = box.metadata(), box.tensors(framework="numpy")
    past_end = t["scale.index1"].copy()
    past_end[7] = len(t["scale.book1"])  # a codeword the book does not have
    for forged_meta, arrays in (({**meta, "geometry": "octree"}, t), ({**meta, "scale_stages": 3}, t),
                                ({**meta, "rotation_stages": 10 ** 6}, t), (meta, {**t, "scale.index1": past_end}),
                                (meta, {**t, "rotation.index0": t["rotation.index0"][:-1]}),
                                (meta, {**t, "rotation.book0": t["scale.book0"]})):
        container.write(tmp_path / "forged.nzs", [_item(k, v) for k, v in arrays.items()], metadata=forged_meta,
                        overwrite=True)
        with pytest.raises(FormatError, match="inconsistent"):
            decode_scene(tmp_path / "forged.nzs")


def test_attribute_errors_match_reordered_gaussians_and_measure_each_attribute(sh3):
    from nzip.scenes.fidelity import SH_C0, attribute_errors, match

    perm = np.random.default_rng(0).permutation(len(sh3))
    shuffled = sh3.subset(perm)
    found = match(sh3, shuffled)
    assert np.array_equal(sh3.positions[found], shuffled.positions)  # the same place (duplicates aside)
    zero = attribute_errors(sh3, shuffled)
    assert all(zero[k]["max"] == 0 for k in ("position", "opacity", "colour", "sh_rest", "covariance"))
    # each attribute moved on its own shows in its own error only
    moved = shuffled.subset(np.arange(len(shuffled)))
    # (small changes, as a codec's: matching weighs them with the position)
    moved.sh_dc = moved.sh_dc + np.float32(0.01)
    moved.scales = moved.scales + np.float32(np.log(1.01))  # every axis 1% longer: covariance 2.01% larger
    e = attribute_errors(sh3, moved.subset(np.arange(len(moved) // 2)))
    assert e["matched"] == len(moved) // 2 and e["of"] == len(sh3)
    # matching weighs what Gaussians draw too, so in try_iter's clumps of near-clones a few
    # pick a neighbour whose colour is nearer the moved one: the errors stay what was done
    assert e["position"]["rms"] < 0.01 and e["opacity"]["rms"] < 0.01
    assert e["colour"]["rms"] == pytest.approx(0.01 * SH_C0, rel=0.1)
    assert e["covariance"]["rms"] == pytest.approx(0.0201, rel=0.1)


def test_matching_weighs_what_gaussians_draw_in_dense_clusters(scenes_dir, tmp_path):
    """gsplat_alti packs Gaussians closer than high's grid cells: by position alone its
    opacity error at medium came out 0.31 (the wrong neighbours), by position and what
    they draw 0.011."""
    from nzip.scenes.fidelity import attribute_errors

    scene = read_scene(scenes_dir / "gsplat_alti_sh3.ply")
    encode_scene(scene, tmp_path / "m.nzs", level="medium", views=0)
    e = attribute_errors(scene, decode_scene(tmp_path / "m.nzs"))
    assert e["opacity"]["rms"] < 0.03 and e["covariance"]["rms"] < 0.4
