"""Probabilistic circuits: the HCLT model, its training, exact conditionals, the .nzpc
model file and the `pc` codec (issue 7)."""

import gzip
import itertools
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("constriction")

import xxhash  # noqa: E402

from nzip import codecs  # noqa: E402
from nzip.codecs.circuits import load_model, model_file  # noqa: E402
from nzip.codecs.circuits.codec import SHIPPED  # noqa: E402
from nzip.codecs.circuits.conditionals import Walk, coding_order, naive  # noqa: E402
from nzip.codecs.circuits.hclt import HCLT, bits_per_dim, chow_liu_tree, mean_log_likelihood  # noqa: E402
from nzip.codecs.circuits.quantized import quantize  # noqa: E402
from nzip.codecs.circuits.train import EMTrainer, train  # noqa: E402
from nzip.errors import (BadParameterError, ChecksumError, CorruptDataError, FormatError,  # noqa: E402
                         UnsupportedDtypeError, VersionError)

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def held_out(n):
    """MNIST test images 5000.. (the protocol's held-out half), n x 28 x 28 uint8."""
    path = MNIST / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    return np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)[5000:5000 + n].copy()


def tiny_data(n=300, d=6, values=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, values, (n, d))
    x[:, 1] = x[:, 0]
    x[:, 3] = (x[:, 2] + rng.integers(0, 2, n)) % values
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_model():
    data = tiny_data()
    model = train(data, 3, shared=2, epochs=3, batch=100, values=5)
    return quantize(model, data_shape=(2, 3), value_range=(0, 4)), data


# -- the model ---------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [0, 2])
def test_likelihood_is_normalised(shared):
    data = tiny_data(d=4, values=3)
    model = HCLT.from_data(data, hidden=3, values=3, seed=1, shared=shared)
    every = np.array(list(itertools.product(range(3), repeat=4)), np.uint8)
    ll = [mean_log_likelihood(model, every[i:i + 1]) for i in range(len(every))]
    assert abs(sum(np.exp(ll)) - 1) < 1e-4, sum(np.exp(ll))


def test_chow_liu_tree_finds_the_chain():
    # x0 -> x1 -> x2 -> x3 (each a noisy copy of the previous): the tree is that chain
    mi = np.zeros((4, 4))
    for a, b, v in [(0, 1, 0.9), (1, 2, 0.8), (2, 3, 0.7), (0, 2, 0.5), (1, 3, 0.4), (0, 3, 0.2)]:
        mi[a, b] = mi[b, a] = v
    edges = {tuple(sorted(e)) for e in chow_liu_tree(mi).tolist()}
    assert edges == {(0, 1), (1, 2), (2, 3)}


def test_full_batch_em_never_lowers_the_likelihood_and_learns_mnist():
    images = held_out(1)  # skips without the data
    path = MNIST / "t10k-images-idx3-ubyte.gz"
    images = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=16).reshape(-1, 784)
    train_set, held = images[:1000], images[5000:5200]  # the protocol: never train on 5000-9999
    model = HCLT.from_data(train_set, hidden=8, shared=16)
    trainer = EMTrainer(model, len(train_set), pseudocount=0.1)
    x = torch.as_tensor(train_set.copy()).long()
    lls = []
    for _ in range(4):
        flows, ll = trainer.flows(x)
        trainer.update(flows, len(x), 1.0)
        lls.append(ll)
    assert all(b >= a - 1e-3 * abs(a) for a, b in zip(lls, lls[1:])), lls
    assert lls[-1] > lls[0] + 20 * len(x), lls
    model = trainer.sync()
    assert bits_per_dim(model, held) < 2.3
    for name in model.param_names():
        assert np.allclose(getattr(model, name).sum(-1), 1, atol=1e-4)


def test_shift_augmentation_moves_digits_and_keeps_pixels():
    from nzip.codecs.circuits.train import shifted

    x = torch.zeros(50, 16, dtype=torch.long)
    x[:, 5] = 200  # one lit pixel at (1, 1) of a 4 x 4 image
    moved = shifted(x, (4, 4), 1, 1.0, torch.Generator().manual_seed(0))
    assert (moved.sum(1) == 200).all()  # an interior pixel never falls off the edge
    lit = moved.argmax(1)
    assert set(lit.tolist()) <= {0, 1, 2, 4, 5, 6, 8, 9, 10} and len(set(lit.tolist())) > 3


# -- exact conditionals ------------------------------------------------------------------
def test_coding_order_is_a_preorder():
    parent = np.array([-1, 0, 0, 1, 1, 2])
    order, events = coding_order(parent)
    assert order.tolist() == [0, 1, 3, 4, 2, 5]
    assert [i for entering, i in events if not entering] == [3, 4, 1, 5, 2, 0]


def test_conditionals_multiply_to_the_likelihood(tiny_model):
    """The chain rule: the coded conditionals' product is the model's P(x)."""
    model, data = tiny_model
    x = torch.as_tensor(data[:40].astype(np.int64))
    logp = torch.zeros(len(x), dtype=torch.float64)

    def pick(i, probs):
        logp.add_(torch.log(probs[torch.arange(len(x)), x[:, i]] / probs.sum(-1)))
        return x[:, i]

    Walk(model).run(len(x), pick)
    # the same (unnormalised) integer tables in float: P(x) / P(anything)
    float_model = model.to_hclt()
    ll = np.array([mean_log_likelihood(float_model, data[i:i + 1]) for i in range(40)])
    assert np.allclose(logp.numpy(), ll, atol=2e-3), np.abs(logp.numpy() - ll).max()


def test_incremental_matches_naive(tiny_model):
    model, data = tiny_model
    walk = Walk(model)
    got = []
    x = torch.as_tensor(data[:30].astype(np.int64))

    def pick(i, probs):
        got.append((probs / probs.sum(-1, keepdim=True)).numpy())
        return x[:, i]

    walk.run(len(x), pick)
    want = naive(model, data[:30], walk.order, model.num_vars)
    assert np.abs(np.stack(got) - want).max() < 1e-5


def test_conditionals_do_not_depend_on_the_batch(tiny_model):
    """Bit-identical probabilities for a sample alone or among others (exact arithmetic)."""
    model, data = tiny_model
    walk = Walk(model)

    def collect(rows):
        out = []
        x = torch.as_tensor(rows.astype(np.int64))

        def pick(i, probs):
            out.append(probs.clone())
            return x[:, i]

        walk.run(len(x), pick)
        return torch.stack(out)

    together = collect(data[:7])
    for j in (0, 3, 6):
        assert torch.equal(collect(data[j:j + 1])[:, 0], together[:, j])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")
def test_conditionals_identical_on_cuda(tiny_model):
    """The exactness argument in practice: a GPU computes the very same probabilities."""
    model, data = tiny_model
    rows = data[:64].astype(np.int64)

    def collect(device):
        out = []
        x = torch.as_tensor(rows, device=device)

        def pick(i, probs):
            out.append(probs.cpu())
            return x[:, i]

        Walk(model, device).run(len(x), pick)
        return torch.stack(out)

    assert torch.equal(collect("cpu"), collect("cuda"))


# -- the codec ---------------------------------------------------------------------------
def test_pc_round_trips_mnist_with_the_shipped_model():
    images = held_out(40)
    frame = codecs.encode(images, "pc")
    back = codecs.decode(frame)
    assert back.dtype == np.uint8 and back.shape == images.shape and np.array_equal(back, images)
    assert codecs.get("pc").model == "mnist"
    # a trained model: far below the 8 bits of raw pixels and below zstd on the same bytes
    bpd = (len(frame) - 200) * 8 / images.size
    assert bpd < 1.6, bpd
    assert len(frame) < 0.9 * len(codecs.encode(images, "zstd", level=19))


def test_pc_round_trip_through_the_shared_helper():
    from helpers import check_roundtrip

    images = held_out(5)
    check_roundtrip(images, "pc")  # numpy in, numpy out
    check_roundtrip(torch.from_numpy(images), "pc", threads=2)  # torch in, torch out
    check_roundtrip(images[:0], "pc")  # empty batch
    check_roundtrip(held_out(6)[::2], "pc")  # a non-contiguous view


@pytest.mark.parametrize("shape", [(28, 28), (3, 784), (0, 28, 28), (2, 2, 28, 28)])
def test_pc_shapes(shape):
    n = int(np.prod(shape)) // 784
    x = held_out(max(n, 1))[:n].reshape(shape)
    back = codecs.decode(codecs.encode(x, "pc"))
    assert back.shape == x.shape and np.array_equal(back, x)


def test_pc_extreme_images_and_uint16():
    x = np.zeros((3, 28, 28), np.uint16)
    x[1] = 255
    x[2] = np.random.default_rng(0).integers(0, 256, (28, 28))  # noise: costly but exact
    back = codecs.decode(codecs.encode(x, "pc"))
    assert back.dtype == np.uint16 and np.array_equal(back, x)


def test_pc_with_own_model(tiny_model, tmp_path):
    model, data = tiny_model
    path = tmp_path / "tiny.nzpc"
    identity = model_file.save(model, path)
    x = data[:20].reshape(20, 2, 3)
    for spec in (path, str(path), model_file.load(path)):
        frame = codecs.encode(x, "pc", model=spec)
        assert np.array_equal(codecs.decode(frame), x)
    # the frame names the model; another model is refused with a clear error
    other = quantize(train(tiny_data(seed=1), 2, epochs=1, batch=100, values=5), (2, 3), (0, 4))
    other_path = tmp_path / "other.nzpc"
    model_file.save(other, other_path)
    frame = codecs.encode(x, "pc", model=str(path))
    from nzip.codecs.circuits import codec as pc_codec
    pc_codec._loaded.pop(identity.hex())
    pc_codec._by_path.clear()
    path.unlink()
    other_path.rename(path)  # same path, different model
    with pytest.raises(CorruptDataError, match="coded with model"):
        codecs.decode(frame)


def test_pc_bad_input(tiny_model, tmp_path):
    images = held_out(2)
    with pytest.raises(UnsupportedDtypeError):
        codecs.encode(images.astype(np.float32), "pc")
    with pytest.raises(BadParameterError, match="shape"):
        codecs.encode(images[:, :27, :27], "pc")
    with pytest.raises(BadParameterError, match="range"):
        codecs.encode(np.full((1, 28, 28), 300, np.uint16), "pc")
    with pytest.raises(BadParameterError, match="cannot read model"):
        codecs.encode(images, "pc", model=str(tmp_path / "missing.nzpc"))
    with pytest.raises(BadParameterError):
        codecs.get("pc", model=3)
    frame = codecs.encode(images, "pc")
    with pytest.raises(FormatError):
        codecs.decode(frame[:-9])
    # forged payloads inside valid frames: the codec's own checks must catch them
    from tests_support import reseal

    with pytest.raises(CorruptDataError, match="not a pc payload"):
        codecs.decode(reseal(frame, lambda p: b"NZI\x01" + p[4:]))
    with pytest.raises(CorruptDataError, match="not a pc payload"):
        codecs.decode(reseal(frame, lambda p: b"NZP\x02" + p[4:]))
    with pytest.raises(CorruptDataError, match="does not match"):
        codecs.decode(reseal(frame, lambda p: p[:12] + struct.pack("<Q", 3) + p[20:]))  # 3 samples, frame says 2
    with pytest.raises(CorruptDataError, match="does not match"):
        codecs.decode(reseal(frame, lambda p: p[:-1]))  # a torn last word
    with pytest.raises(CorruptDataError, match="coded with model"):
        codecs.decode(reseal(frame, lambda p: p[:4] + b"\0" * 8 + p[12:]))  # an unknown model
    flipped = bytearray(frame)
    flipped[-20] ^= 0x10
    with pytest.raises(ChecksumError):
        codecs.decode(bytes(flipped))


# -- the model file ----------------------------------------------------------------------
def _resealed(blob: bytes) -> bytes:
    return blob[:-8] + xxhash.xxh3_64_digest(blob[:-8])


def _with_header(blob: bytes, edit) -> bytes:
    import json

    hlen = struct.unpack_from("<I", blob, 10)[0]
    header = json.loads(blob[14:14 + hlen])
    edit(header)
    new = json.dumps(header).encode()
    return _resealed(blob[:10] + struct.pack("<I", len(new)) + new + blob[14 + hlen:])


def test_model_file_round_trip_and_identity(tiny_model):
    model, _ = tiny_model
    blob = model_file.dumps(model)
    back = model_file.loads(blob)
    assert back.identity == blob[-8:] == model_file.dumps(back)[-8:]
    for name in ("parent", "prior", "transition", "leaf_mix", "leaf_dists"):
        assert np.array_equal(getattr(back, name), getattr(model, name)), name
    assert back.data_shape == (2, 3) and back.value_range == (0, 4)


def test_model_file_bad_input(tiny_model):
    model, _ = tiny_model
    blob = model_file.dumps(model)
    with pytest.raises(FormatError, match="magic"):
        model_file.loads(b"XXXX" + blob[4:])
    with pytest.raises(VersionError):
        model_file.loads(_resealed(blob[:8] + struct.pack("<H", 9) + blob[10:]))
    for cut in (10, 30, len(blob) - 1):
        with pytest.raises(FormatError):
            model_file.loads(blob[:cut])
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    with pytest.raises(CorruptDataError, match="checksum"):
        model_file.loads(bytes(flipped))
    # valid checksums around absurd or inconsistent headers
    absurd = _with_header(blob, lambda h: h["arrays"]["transition"].update(shape=[1 << 30, 64, 64]))
    with pytest.raises(CorruptDataError):
        model_file.loads(absurd)
    with pytest.raises(CorruptDataError, match="data shape"):
        model_file.loads(_with_header(blob, lambda h: h.update(data_shape=[0])))
    with pytest.raises(CorruptDataError, match="value range"):
        model_file.loads(_with_header(blob, lambda h: h.update(value_range=[0, 1 << 20])))
    for broken in ("no root", "cycle"):
        bad = quantize(model.to_hclt(), (2, 3), (0, 4))
        bad.parent = bad.parent.copy()
        child = int(np.flatnonzero(bad.parent == bad.root)[0])
        if broken == "no root":
            bad.parent[bad.root] = child  # root <-> child
        else:  # a second root and a loop elsewhere: a node made its own grandparent
            leaf = int(np.flatnonzero(~np.isin(np.arange(6), bad.parent))[0])
            bad.parent[bad.parent[leaf]] = leaf
        with pytest.raises(CorruptDataError, match="tree|cycle"):
            model_file.loads(model_file.dumps(bad))


def test_shipped_model_loads():
    model = load_model(SHIPPED["mnist"])
    assert model.data_shape == (28, 28) and model.value_range == (0, 255) and model.hidden == 32
    assert SHIPPED["mnist"].stat().st_size < 4 << 20


# -- CLI ---------------------------------------------------------------------------------
def test_cli_train_pc_pack_unpack(tmp_path):
    images = held_out(60)
    np.save(tmp_path / "train.npy", images[:50])
    np.save(tmp_path / "digits.npy", images[50:])
    nzip = [sys.executable, "-m", "nzip"]
    run = lambda *a: subprocess.run(nzip + list(a), cwd=tmp_path, capture_output=True, text=True)  # noqa: E731
    r = run("train-pc", "train.npy", "-o", "m.nzpc", "--hidden", "4", "--shared", "8", "--epochs", "2", "-q")
    assert r.returncode == 0, r.stderr
    assert run("train-pc", "train.npy", "-o", "m.nzpc").returncode == 1  # no overwrite without -f
    r = run("pack", "digits.npy", "--codec", "pc", "--model", "m.nzpc")
    assert r.returncode == 0, r.stderr
    r = run("unpack", "digits.nzf", "-o", "back.npy", "--model", "m.nzpc")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "back.npy"), images[50:])
    r = run("pack", "digits.npy", "--codec", "pc", "-o", "shipped.nzf")
    assert r.returncode == 0 and (tmp_path / "shipped.nzf").stat().st_size < (tmp_path / "digits.nzf").stat().st_size
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    r = run("pack", "bad.npy", "--codec", "pc")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "bad.npy" in r.stderr
