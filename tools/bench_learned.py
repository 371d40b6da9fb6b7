"""Rate-distortion of nzip's learned image codec against the classic codecs, on Kodak.

    python tools/bench_learned.py [--images N] [--json bench/results/learned_images.json]
                                  [--plot bench/results/kodak_rd.png] [--readme]

For every Kodak image (../shared/data/kodak, 24 PNGs; never used in training): nzip's
models at each quality (real bytes of codecs.encode, decoded by codecs.decode), and JPEG
(Pillow, libjpeg 4:2:0), WebP (Pillow, method 6), AVIF (Pillow, speed 4) and JPEG XL
(imagecodecs, effort 7) over their quality ranges. Rate = file bytes * 8 / pixels (bpp),
distortion = PSNR over RGB, both averaged over the images at each setting. BD-rate
(Bjontegaard, piecewise-cubic: log-rate as a function of PSNR, averaged over the PSNR
range both curves cover) of each nzip model against each classic codec: negative = fewer bits for the
same PSNR. Times are per image on this machine's CPU (torch threads = all cores).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


def bd_rate(rate_a, psnr_a, rate_b, psnr_b) -> float:
    """Bjontegaard delta rate of curve a against curve b, in percent: log-rate as a
    piecewise-cubic (PCHIP, as JVET's and CompressAI's tools do) function of PSNR, averaged
    over the PSNR range both curves cover."""
    from scipy.interpolate import PchipInterpolator
    from scipy.integrate import quad

    def curve(rate, score):
        order = np.argsort(score)
        return PchipInterpolator(np.asarray(score)[order], np.log(np.asarray(rate)[order]))

    fa, fb = curve(rate_a, psnr_a), curve(rate_b, psnr_b)
    lo, hi = max(min(psnr_a), min(psnr_b)), min(max(psnr_a), max(psnr_b))
    if lo >= hi:
        return float("nan")
    diff = quad(lambda p: fa(p) - fb(p), lo, hi, limit=200)[0] / (hi - lo)
    return float((np.exp(diff) - 1) * 100)


def classic_codecs() -> dict:
    """name -> (encode(image, setting) -> bytes, decode(bytes) -> image, settings)."""
    from PIL import Image

    def pil(fmt, **kw):
        def enc(im, q):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, fmt, quality=q, **kw)
            return buf.getvalue()
        return enc

    def pil_dec(b):
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im.convert("RGB"))

    out = {
        "JPEG": (pil("JPEG"), pil_dec, [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]),
        "WebP": (pil("WEBP", method=6), pil_dec, [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]),
    }
    from PIL import features

    if features.check("avif"):
        out["AVIF"] = (pil("AVIF", speed=4), pil_dec, [10, 20, 30, 40, 50, 60, 70, 80, 90])
    try:
        import imagecodecs

        if imagecodecs.JPEGXL.available:
            out["JPEG XL"] = (lambda im, d: imagecodecs.jpegxl_encode(im, distance=d, effort=7),
                              lambda b: imagecodecs.jpegxl_decode(b),
                              [0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
    except ImportError:
        pass
    return out


def run_classic(images, name, enc, dec, settings) -> list[dict]:
    points = []
    for s in settings:
        bpp, score = [], []
        for im in images:
            blob = enc(im, s)
            bpp.append(len(blob) * 8 / (im.shape[0] * im.shape[1]))
            score.append(psnr(dec(blob), im))
        points.append({"setting": s, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(score))})
    print(f"{name:8s} " + "  ".join(f"{p['bpp']:.3f}/{p['psnr']:.2f}" for p in points), flush=True)
    return points


def run_nzip(images, model: str) -> dict:
    from nzip import codecs

    qualities = codecs.get("image-hyperprior").qualities
    codecs.decode(codecs.encode(images[0][:64, :64], "image-hyperprior", model=model))  # load once
    points, enc_s, dec_s = [], [], []
    for q in qualities:
        bpp, score = [], []
        for im in images:
            t0 = time.perf_counter()
            blob = codecs.encode(im, "image-hyperprior", quality=q, model=model)
            t1 = time.perf_counter()
            out = codecs.decode(blob)
            t2 = time.perf_counter()
            enc_s.append(t1 - t0)
            dec_s.append(t2 - t1)
            bpp.append(len(blob) * 8 / (im.shape[0] * im.shape[1]))
            score.append(psnr(out, im))
        points.append({"quality": q, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(score))})
        print(f"nzip {model} q{q}: {points[-1]['bpp']:.3f} bpp {points[-1]['psnr']:.2f} dB", flush=True)
    return {"points": points, "encode_s": float(np.median(enc_s)), "decode_s": float(np.median(dec_s))}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for name, pts in results["classic"].items():
        ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], "--o", ms=3, label=name)
    for model, r in results["nzip"].items():
        ax.plot([p["bpp"] for p in r["points"]], [p["psnr"] for p in r["points"]], "-s", ms=4, lw=2,
                label=f"nzip {model}")
    ax.set_xlim(0, 1.6)
    ax.set_ylim(25, 38)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR RGB (dB)")
    ax.set_title(f"Kodak ({results['images']} images): rate-distortion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def table(results: dict) -> str:
    classic = list(results["classic"])
    lines = ["| nzip model | " + " | ".join(f"BD-rate vs {c}" for c in classic) + " | encode s/image | decode s/image |",
             "|---|" + "---:|" * (len(classic) + 2)]
    for model, r in results["nzip"].items():
        cells = [f"{r['bd_rate'][c]:+.1f}%" for c in classic]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {r['encode_s']:.2f} | {r['decode_s']:.2f} |")
    lines += ["", "| nzip model | " + " | ".join(f"q{p['quality']}" for p in next(iter(results['nzip'].values()))['points']) + " |",
              "|---|" + "---:|" * len(next(iter(results['nzip'].values()))['points'])]
    for model, r in results["nzip"].items():
        lines.append(f"| {model} (bpp / dB) | " + " | ".join(f"{p['bpp']:.3f} / {p['psnr']:.2f}" for p in r["points"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24, help="first N Kodak images (default all 24)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "learned_images.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "bench" / "results" / "kodak_rd.png")
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--readme-from", type=Path, help="write the README table of an earlier run's JSON, measure nothing")
    args = ap.parse_args(argv)
    if args.readme_from:
        from readme_table import replace_table

        return replace_table("learned-images", table(json.loads(args.readme_from.read_text())))
    from PIL import Image

    files = sorted(KODAK.glob("kodim*.png"))[: args.images]
    if not files:
        raise SystemExit(f"no Kodak images under {KODAK}")
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    results = {"images": len(images), "classic": {}, "nzip": {}}
    for name, (enc, dec, settings) in classic_codecs().items():
        results["classic"][name] = run_classic(images, name, enc, dec, settings)
    from nzip.features import image_models

    for model in image_models.ARCHS:
        r = run_nzip(images, model)
        r["bd_rate"] = {}
        for name, pts in results["classic"].items():
            r["bd_rate"][name] = bd_rate([p["bpp"] for p in r["points"]], [p["psnr"] for p in r["points"]],
                                         [p["bpp"] for p in pts], [p["psnr"] for p in pts])
        results["nzip"][model] = r
    text = table(results)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    plot(results, args.plot)
    if args.readme:
        from readme_table import replace_table

        replace_table("learned-images", text)


if __name__ == "__main__":
    main()
