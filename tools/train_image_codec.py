"""Train nzip's learned image models (one variable-rate model per architecture).

Recipe (what shipped weights were made with; see the README's "Learned image codec"):
  data     BSDS500's 500 photographs (../shared/data/train-images: train, val and test;
           never Kodak), random 256x256 crops with random flips, batch 16, all on the GPU
  stage 1  the fixed-rate model at the top quality (lambda 0.0483), Adam lr 1e-4
  stage 2  every step one random quality (lambda of nzip.features.image_models.LAMBDAS)
           through CompressAI's variable-rate code path (gain-scaled latent, straight-
           through rounding), lr decaying to 1e-5
  loss     lambda * 255^2 * MSE + bits per pixel; the entropy bottleneck's quantiles by
           its auxiliary loss (Adam lr 1e-3)
  export   float weights rounded to float16, the entropy coder's CDF tables computed
           once on the CPU from those, saved with nzip.save (nzip/features/weights/ARCH.nz)

    python tools/train_image_codec.py --arch mbt2018-mean --data DIR --minutes 9 --out DIR
        [--resume DIR] [--kodak DIR]

Runs on CUDA (the device machine); on a CPU it works, slowly (use it for smoke tests).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nzip.features import image_models  # noqa: E402


def load_images(folder: Path, device) -> list[torch.Tensor]:
    """C x H x W float16 tensors in [0, 1]."""
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {folder}")
    return [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).to(device).permute(2, 0, 1).half() / 255
            for f in files]


def load_features(path: Path, device) -> tuple[list[torch.Tensor], tuple[float, float]]:
    """The feature codec's training frame: hidden states (tokens x channels, from
    tools/feature_data.py) truncated and scaled to [0, 1] as the codec does, one channel."""
    from nzip.features import feature_codec

    x = np.load(path)["features"].astype(np.float32)
    lo, hi = feature_codec.truncation_range(x)
    frame = feature_codec.to_unit(torch.from_numpy(x), lo, hi)
    return [frame[None].to(device).half()], (lo, hi)


def batch(images: list[torch.Tensor], size: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    out = []
    for i in torch.randint(len(images), (size,), generator=gen).tolist():
        img = images[i]
        h, w = img.shape[1:]
        top = int(torch.randint(h - crop + 1, (1,), generator=gen))
        left = int(torch.randint(w - crop + 1, (1,), generator=gen))
        patch = img[:, top:top + crop, left:left + crop]
        flips = torch.randint(2, (2,), generator=gen).tolist()
        if flips[0]:
            patch = patch.flip(2)
        if flips[1]:
            patch = patch.flip(1)
        out.append(patch)
    return torch.stack(out).float()


def rd_loss(out: dict, x: torch.Tensor, lmbda: float):
    n_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(torch.log(l).sum() for l in out["likelihoods"].values()) / (-math.log(2) * n_pixels)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return lmbda * 255 ** 2 * mse + bpp, bpp, mse


def load_nz(path: Path) -> dict:
    """Weights of an earlier run (its exported file) to continue training from."""
    import nzip

    return {k: v.float() if v.is_floating_point() else v for k, v in nzip.load(path).items()}


def prior_steps(folder: Path | None, name: str) -> int:
    if folder is None:
        return 0
    import nzip

    with nzip.open(folder / f"{name}.nz") as box:
        meta = box.metadata()
    return int(meta.get("steps", 0)) + int(meta.get("resumed_from_steps", 0))


def export(model, arch: str, path: Path, info: dict) -> None:
    """The shipped file: float16 weights and the CDF tables computed from them."""
    import nzip

    model = model.cpu().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.update(force=True)
    # parameters as float16; buffers (bounds such as 1e-9, CDF tables) exactly as they are
    params = {name for name, _ in model.named_parameters()}
    state = {k: v.half() if k in params else v for k, v in model.state_dict().items()}
    nzip.save(state, path, metadata={"arch": arch, "n": image_models.N, "m": image_models.M, **info})


def weights_name(args) -> str:
    return "feature-hyperprior" if args.features else args.arch


@torch.no_grad()
def kodak_estimate(model, folder: Path, device) -> list[tuple[int, float, float]]:
    """(quality, bpp from the likelihoods, PSNR) averaged over Kodak: a quick check only;
    tools/bench_learned.py measures real bytes."""
    images = load_images(folder, device)
    model.eval()
    model.update(force=True)
    rows = []
    for q in range(1, len(image_models.LAMBDAS) + 1):
        bpps, psnrs = [], []
        for img in images:
            x = img[None].float()
            h, w = x.shape[2:]
            padded = torch.nn.functional.pad(x, (0, -w % 64, 0, -h % 64), mode="replicate")
            out = model(padded, stage=2, s=q - 1)
            out["x_hat"] = out["x_hat"][..., :h, :w]
            n = h * w
            bpps.append(float(sum(torch.log(l).sum() for l in out["likelihoods"].values()) / (-math.log(2) * n)))
            mse = float(torch.mean((out["x_hat"].clamp(0, 1) - x) ** 2))
            psnr = 10 * math.log10(1 / mse)
            psnrs.append(psnr)
        rows.append((q, float(np.mean(bpps)), float(np.mean(psnrs))))
    model.train()
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(image_models.ARCHS), required=True)
    ap.add_argument("--data", type=Path, help="a folder of training images")
    ap.add_argument("--features", type=Path, help="train the one-channel feature model on these hidden states instead")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=9.0)
    ap.add_argument("--stage1", type=float, default=0.35, help="fraction of the time in stage 1 (0 when resuming)")
    ap.add_argument("--resume", type=Path)
    ap.add_argument("--kodak", type=Path)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lambda-scale", type=float, default=1.0,
                    help="multiply every quality's lambda (the feature model trains at 8: its downstream use needs higher rates)")
    ap.add_argument("--seed", type=int, default=0, help="crop order (give each resumed run its own)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    name = weights_name(args)
    extra = {}
    if args.features:
        images, (lo, hi) = load_features(args.features, device)
        extra = {"channels": 1, "truncation": [lo, hi]}
        crop = 128
    else:
        images, crop = load_images(args.data, device), 256
    model = image_models.build(args.arch, channels=extra.get("channels", 3))
    if args.resume:
        model.load_state_dict(load_nz(args.resume / f"{name}.nz"))
    model.to(device).train()
    lambdas = [lam * args.lambda_scale for lam in image_models.LAMBDAS]
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    budget = args.minutes * 60
    start = time.monotonic()
    step, log = 0, []
    while (elapsed := time.monotonic() - start) < budget:
        frac = elapsed / budget
        stage = 1 if frac < args.stage1 else 2
        # cosine decay over stage 2, from lr to lr/10
        t2 = max(0.0, (frac - args.stage1) / max(1e-9, 1 - args.stage1))
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t2))) if stage == 2 else args.lr
        q = len(image_models.LAMBDAS) - 1 if stage == 1 else int(torch.randint(len(image_models.LAMBDAS), (1,), generator=gen))
        x = batch(images, args.batch, crop, gen)
        out = model(x, stage=stage, s=q)
        loss, bpp, mse = rd_loss(out, x, lambdas[q])
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux = model.aux_loss()
        aux.backward()
        aux_opt.step()
        step += 1
        if step % 500 == 0:
            psnr = 10 * math.log10(1 / max(float(mse), 1e-10))
            line = f"step {step} t={elapsed:.0f}s stage {stage} q{q + 1} loss {float(loss):.4f} bpp {float(bpp):.3f} psnr {psnr:.2f} aux {float(aux):.1f}"
            print(line, flush=True)
            log.append(line)
    info = {"steps": step, "minutes": args.minutes, "batch": args.batch, "lr": args.lr,
            "resumed_from_steps": prior_steps(args.resume, name), "lambdas": lambdas, **extra}
    export(model, args.arch, args.out / f"{name}.nz", info)
    print(f"{name}: {step} steps in {time.monotonic() - start:.0f} s", flush=True)
    if args.kodak and not args.features:
        for q, bpp, psnr in kodak_estimate(image_models.ImageModel(args.arch, args.out / f"{args.arch}.nz").model.to(device), args.kodak, device):
            print(f"{args.arch} kodak q{q}: {bpp:.3f} bpp {psnr:.2f} dB", flush=True)


if __name__ == "__main__":
    main()
