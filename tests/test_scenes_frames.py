"""Gaussian frames (nzip.scenes.frames): 24 ways to write one ellipsoid, and the codec's choice."""

import dataclasses

import numpy as np
import pytest
import torch

from nzip.scenes import read_scene
from nzip.scenes import codec
from nzip.scenes.frames import AXES, CUBE, _multiply, canonical
from nzip.scenes.render import _rotation_matrices


def covariances(q, scales):
    M = _rotation_matrices(torch.as_tensor(np.asarray(q, np.float64))) * torch.exp(torch.as_tensor(np.asarray(scales, np.float64)))[:, None, :]
    return (M @ M.transpose(1, 2)).numpy()


def turned(q, scales, seed):
    """The same Gaussians, each written in a random one of its 24 frames."""
    k = np.random.default_rng(seed).integers(0, 24, len(q))
    q = np.asarray(q, np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
    return _multiply(q, CUBE[k]), np.take_along_axis(np.asarray(scales, np.float64), AXES[k], axis=1)


def test_the_cube_group_keeps_covariances_and_canonical_frames_are_near_the_identity():
    rng = np.random.default_rng(0)
    q, s = rng.normal(size=(5000, 4)), rng.normal(-3, 1, size=(5000, 3))
    assert len({tuple(np.round(g, 9)) for g in CUBE}) == 24
    assert all(sorted(row) == [0, 1, 2] for row in AXES.tolist())
    qt, st = turned(q, s, 1)
    ref = covariances(q, s)
    assert np.abs(covariances(qt, st) - ref).max() <= 1e-12 * np.abs(ref).max()
    qc, sc = canonical(q, s)
    assert np.abs(covariances(qc, sc) - ref).max() <= 1e-12 * np.abs(ref).max()
    w, xyz = qc[:, 0], np.abs(qc[:, 1:])
    assert (w >= xyz.sum(axis=1) - 1e-6).all() and (xyz <= (np.sqrt(2) - 1) * w[:, None] + 1e-6).all()
    # whichever frame a Gaussian comes in, it leaves in the same one
    qc2, sc2 = canonical(qt, st)
    same = np.abs(qc2 - qc).max(axis=1) < 1e-9
    assert same.mean() > 0.999 and np.array_equal(sc2[same], sc[same])


@pytest.mark.parametrize("level", ["medium", "low"])
def test_the_codec_stores_one_frame_whatever_the_scene_wrote(scenes_dir, tmp_path, monkeypatch, level):
    """The donut, every Gaussian turned to a random one of its frames: the files decode to
    the same ellipsoids, and are as small as the original's (without the canonical frame:
    larger by the entropy of the frame, measured below)."""
    donut = read_scene(scenes_dir / "v3dg_donut_fused.ply")
    q, s = turned(donut.rotations, donut.scales, 2)
    shuffled = dataclasses.replace(donut, rotations=q.astype(np.float32), scales=s.astype(np.float32))
    a = codec.encode_scene(donut, tmp_path / "a.nzs", level=level, views=0)
    b = codec.encode_scene(shuffled, tmp_path / "b.nzs", level=level, views=0)
    da, db = codec.decode_scene(tmp_path / "a.nzs"), codec.decode_scene(tmp_path / "b.nzs")
    same = (np.abs(da.rotations - db.rotations).max(axis=1) < 1e-6) & (np.abs(da.scales - db.scales).max(axis=1) < 1e-6)
    assert same.mean() > 0.99, same.mean()
    assert abs(b["bytes"] - a["bytes"]) < 0.003 * a["bytes"], (a["bytes"], b["bytes"])
    monkeypatch.setattr(codec, "canonical", lambda rotations, scales: (
        rotations / np.linalg.norm(rotations, axis=1, keepdims=True), scales))
    c = codec.encode_scene(shuffled, tmp_path / "c.nzs", level=level, views=0)
    print(level, a["bytes"], b["bytes"], c["bytes"])
    assert c["bytes"] > 1.03 * b["bytes"], (b["bytes"], c["bytes"])
