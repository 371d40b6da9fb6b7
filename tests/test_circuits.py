"""HCLT probabilistic circuits (issue 7's model; the codec on top of it is not built yet)."""

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nzip.codecs.circuits.hclt import HCLT, bits_per_dim, chow_liu_tree, em_step, mean_log_likelihood  # noqa: E402

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_likelihood_is_normalised():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, (200, 4)).astype(np.uint8)
    data[:, 1] = data[:, 0]  # some dependence for the tree to find
    model = HCLT.from_data(data, hidden=3, values=3, seed=1)
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


def test_em_learns_mnist():
    path = MNIST / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    images = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=16).reshape(-1, 784)
    train, held = images[:1000], images[5000:5200]  # the protocol: never train on 5000-9999
    model = HCLT.from_data(train, hidden=8)
    # full-batch EM (one batch, step 1) never lowers the training likelihood
    lls = [em_step(model, [train], step=1.0, pseudocount=0.1) for _ in range(4)]
    assert all(b >= a - 1e-3 for a, b in zip(lls, lls[1:])), lls
    assert lls[-1] > lls[0] + 20, lls
    assert bits_per_dim(model, held) < 2.3
    for p in (model.prior, model.transition, model.emission):
        assert np.allclose(p.sum(-1), 1, atol=1e-4)
