"""nzip's reference renderer against gsplat's CUDA rasteriser, on the same scenes and cameras.

Run on a machine with a CUDA GPU and gsplat installed (the device machine; gsplat compiles
its kernels on first use):
    python tools/validate_renderer.py [--scenes DIR] [--views 24] [--sizes 256x192,640x480]
                                      [--json bench/results/renderer_vs_gsplat.json]

For every scene under DIR (default ../shared/data/scenes; the .ply and .spz files that
bench_scenes.py uses): the orbit of cameras that `nzip scene-eval` uses, rendered by
nzip.scenes.render (on CUDA) and by gsplat.rasterization (classic mode, 0.3 px low-pass,
the same near plane, black background, SH evaluated by gsplat), both clamped to [0, 1] and
compared by PSNR (mean over views, as nzip.scenes.fidelity computes it) and SSIM. The bar
of issue 5 is >= 45 dB. Also: each renderer's time per view (median, after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nzip.scenes.fidelity import psnr, ssim  # noqa: E402
from nzip.scenes.refine import GSPLAT_ARGS, gsplat_cameras  # noqa: E402
from nzip.scenes.render import Camera, SceneTensors, orbit, render  # noqa: E402
from nzip.scenes.scene import Scene  # noqa: E402
from bench_scenes import each_scene  # noqa: E402



def gsplat_renders(scene: Scene, cams: list[Camera]) -> list[torch.Tensor]:
    """The scene through gsplat.rasterization, one batch of cameras, clamped to [0, 1]."""
    from gsplat import rasterization

    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device="cuda")

    viewmats, Ks = gsplat_cameras(cams, "cuda")
    shs = torch.cat([t(scene.sh_dc)[:, None, :], t(scene.sh_rest)], dim=1)
    images, _, _ = rasterization(
        t(scene.positions), t(scene.rotations), torch.exp(t(scene.scales)), torch.sigmoid(t(scene.opacity)), shs,
        viewmats, Ks, cams[0].width, cams[0].height, sh_degree=scene.sh_degree, **GSPLAT_ARGS)
    return [im.clamp(0, 1) for im in images]


def timed(fn, reps: int = 5) -> tuple[object, float]:
    out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def compare(scene: Scene, views: int, width: int, height: int) -> dict:
    cams = orbit(scene, views, width, height)
    g = SceneTensors(scene, "cuda")
    ours, t_ours = timed(lambda: [render(g, c).clamp(0, 1) for c in cams])
    theirs, t_theirs = timed(lambda: gsplat_renders(scene, cams))
    per_view = [psnr(a, b) for a, b in zip(ours, theirs)]
    return {
        "size": f"{width}x{height}", "views": views,
        "psnr": float(np.mean(per_view)), "psnr_min": float(np.min(per_view)),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(ours, theirs)])),
        "max_abs": float(max(float((a - b).abs().max()) for a, b in zip(ours, theirs))),
        "nzip_ms_per_view": 1000 * t_ours / views, "gsplat_ms_per_view": 1000 * t_theirs / views,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=str(ROOT.parent / "shared" / "data" / "scenes"))
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--sizes", default="256x192,640x480")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "renderer_vs_gsplat.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("validate_renderer: needs a CUDA GPU (gsplat's rasteriser runs on CUDA only)", file=sys.stderr)
        return 1
    import gsplat

    rows = []
    for name, scene in each_scene(args.scenes):
        for size in args.sizes.split(","):
            w, h = (int(x) for x in size.split("x"))
            row = {"scene": name, "gaussians": len(scene), "sh_degree": scene.sh_degree, **compare(scene, args.views, w, h)}
            rows.append(row)
            print(f"{name:28s} {row['size']:>8s}  PSNR {row['psnr']:6.2f} dB (min {row['psnr_min']:6.2f})  "
                  f"SSIM {row['ssim']:.5f}  max |diff| {row['max_abs']:.4f}  "
                  f"ms/view nzip {row['nzip_ms_per_view']:7.2f}  gsplat {row['gsplat_ms_per_view']:6.2f}", flush=True)
    result = {"gsplat": gsplat.__version__, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
              "bar_psnr_db": 45.0, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    worst = min(r["psnr"] for r in rows)
    print(f"worst mean PSNR {worst:.2f} dB (bar 45 dB): {'met' if worst >= 45 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
