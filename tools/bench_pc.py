"""Lossless MNIST: nzip's probabilistic-circuit codec `pc` against image and general
codecs, on the 5,000 held-out test images (MNIST test 5000-9999), in one run.

    python tools/bench_pc.py [--images 5000] [--readme]

Per image (each file decodable alone): PNG (Pillow, optimize), WebP lossless (Pillow,
method 6), JPEG XL lossless (imagecodecs, effort 9). Over the whole set: zstd -19,
xz -9e, and nzip-pc's one frame. nzip-pc also per image: single-image frames for the
first 200 images (the frame header included, and the coded payload alone). bpd = bits
per pixel (dimension). Also: encode/decode images per second, the theoretical bpd of the
model (its negative log-likelihood), and the incremental conditionals' speed-up over
recomputing them from scratch. Writes bench/results/pc.json.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
RESULTS = ROOT / "bench" / "results" / "pc.json"


def per_image(images, encode) -> float:
    return sum(len(encode(im)) for im in images) * 8 / images.size


def png(im):
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(im).save(b, format="PNG", optimize=True)
    return b.getvalue()


def webp(im):
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(im).save(b, format="WEBP", lossless=True, quality=100, method=6)
    return b.getvalue()


def jxl(im):
    import imagecodecs

    return imagecodecs.jpegxl_encode(im, lossless=True, effort=9)


def main(argv=None) -> None:
    import torch
    import zstandard

    from nzip import codecs
    from nzip.codecs.circuits.codec import SHIPPED, load_model, walk_for
    from nzip.codecs.circuits.conditionals import naive
    from nzip.codecs.circuits.hclt import bits_per_dim
    from nzip.formats import frame as frame_format
    from train_pc import mnist_split

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's table")
    args = ap.parse_args(argv)

    _, test = mnist_split()
    images = test[:args.images].reshape(-1, 28, 28)
    n, dims = len(images), images.size
    model = load_model(SHIPPED["mnist"])
    rows = []

    def row(name, scope, bpd, **extra):
        rows.append(dict(codec=name, scope=scope, bpd=round(bpd, 4), **extra))
        print(f"{name:<28} {scope:<10} {bpd:7.4f} bpd " + " ".join(f"{k}={v}" for k, v in extra.items()), flush=True)

    walk_for(model)  # tables built once, as a long-running coder would
    t0 = time.perf_counter()
    frame = codecs.encode(images, "pc", threads=0)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = codecs.decode(frame)
    t_dec = time.perf_counter() - t0
    assert np.array_equal(back, images), "pc round trip failed"
    row("nzip-pc (one frame)", "set", len(frame) * 8 / dims, encode_img_s=round(n / t_enc, 1),
        decode_img_s=round(n / t_dec, 1), decode_s=round(t_dec, 2))
    row("nzip-pc model NLL", "theory", bits_per_dim(model.to_hclt(), images.reshape(n, -1)))
    few = images[:200]
    frames = [codecs.encode(im, "pc") for im in few]
    row("nzip-pc (frame per image)", "image", sum(map(len, frames)) * 8 / few.size, images=len(few))
    payloads = [frame_format.unpack(f)[1] for f in frames]
    row("nzip-pc (payload per image)", "image", sum(len(p) - 20 for p in payloads) * 8 / few.size, images=len(few))

    row("PNG", "image", per_image(images, png))
    row("WebP lossless", "image", per_image(images, webp))
    row("JPEG XL lossless", "image", per_image(images, jxl))
    raw = images.tobytes()
    row("zstd -19", "set", len(zstandard.ZstdCompressor(level=19).compress(raw)) * 8 / dims)
    xz = len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) * 8 / dims
    row("xz -9e", "set", xz)

    # incremental conditionals against recomputing them from scratch, per image
    sample = images[:50].reshape(50, -1)
    x = torch.as_tensor(sample.astype(np.int64))
    walk = walk_for(model)
    t0 = time.perf_counter()
    walk.run(len(x), lambda i, probs: x[:, i])
    t_walk = (time.perf_counter() - t0) / len(x)
    t0 = time.perf_counter()
    naive(model, sample, walk.order, 8)
    t_naive = (time.perf_counter() - t0) / 8 * model.num_vars / len(x)
    speed = dict(incremental_ms_per_image=round(t_walk * 1e3, 3), naive_ms_per_image=round(t_naive * 1e3, 1),
                 speedup=round(t_naive / t_walk, 1))
    print(speed)
    pc = rows[0]["bpd"]
    result = dict(images=n, held_out="MNIST test 5000-%d" % (5000 + n - 1), model=model.training,
                  model_bytes=SHIPPED["mnist"].stat().st_size, rows=rows, conditionals=speed,
                  pc_vs_xz=round(pc / xz, 4), torch_threads=torch.get_num_threads())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"nzip-pc / xz = {pc / xz:.3f}")
    if args.readme:
        from readme_table import replace_table

        replace_table("pc", readme_table(result))


def readme_table(r) -> str:
    lines = ["| codec | scope | bits per pixel | vs nzip-pc |", "|---|---|---:|---:|"]
    pc = r["rows"][0]["bpd"]
    for row in r["rows"]:
        lines.append(f"| {row['codec']} | {row['scope']} | {row['bpd']:.3f} | {row['bpd'] / pc:.2f}x |")
    first = r["rows"][0]
    c = r["conditionals"]
    lines += ["", f"{r['images']} held-out images ({r['held_out']}); nzip-pc / xz -9e = **{r['pc_vs_xz']:.3f}**. "
              f"nzip-pc encodes {first['encode_img_s']} and decodes {first['decode_img_s']} images/s "
              f"({first['decode_s']} s for the set) on {r['torch_threads']} CPU threads. "
              f"Incremental conditionals: {c['incremental_ms_per_image']} ms per image against "
              f"{c['naive_ms_per_image']} ms recomputed from scratch ({c['speedup']}x). "
              f"Shipped model: {r['model_bytes'] / 1e6:.1f} MB."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
