"""Codebook refinement against renders (nzip.scenes.refine): what it buys, scene by scene.

    python tools/bench_refine.py [--scenes DIR] [--names a.ply,b.spz] [--levels low,medium,high]
                                 [--steps 2000] [--lr 1e-4] [--device cuda] [--json F] [--readme]

For every SH3 scene (only those have codebooks: the SH rest) and level: the .nzs bytes and
fidelity (PSNR/SSIM from the 24 orbit cameras at 256 x 192 that tools/bench_scenes.py
uses; refinement trains on other cameras) without refinement and with it, for each
(steps, lr) given (comma-separated lists), and the refinement's time. Meant for a GPU (with
gsplat installed the refinement renders through gsplat); on a CPU it works, slowly.
Results: bench/results/scenes_refine.json (and with --readme the README's table).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nzip.formats import container  # noqa: E402
from nzip.scenes.codec import decode_scene, encode_scene  # noqa: E402
from nzip.scenes.fidelity import fidelity, renders  # noqa: E402
from nzip.scenes.render import orbit  # noqa: E402
import nzip.scenes.refine as refine  # noqa: E402
from bench_scenes import each_scene  # noqa: E402
from readme_table import replace_table  # noqa: E402

SCENES = ["gsplat_alti_sh3.ply", "try_iter7000_sh3.ply", "pod_sh3_v2.spz"]


def table(result: dict) -> str:
    lines = [f"Refinement on {result['device']} ({result['renderer']}); fidelity from 24 orbit cameras at 256x192, "
             "refinement trained on 48 others.", "",
             "| scene | level | bytes | PSNR dB | SSIM | refined: steps, lr | kept | bytes | PSNR dB | SSIM | gain dB | s |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['scene']} | {r['level']} | {r['bytes']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['steps']}, {r['lr']:g} | {r.get('kept', '')} | {r['refined_bytes']} | {r['refined_psnr']:.2f} | "
                     f"{r['refined_ssim']:.4f} | {r['refined_psnr'] - r['psnr']:+.2f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=str(ROOT.parent / "shared" / "data" / "scenes"))
    ap.add_argument("--names", default=",".join(SCENES), help="which scenes, in this order")
    ap.add_argument("--levels", default="low,medium,high")
    ap.add_argument("--steps", default="2000")
    ap.add_argument("--lr", default="1e-4")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "scenes_refine.json"))
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    try:
        import gsplat  # noqa: F401

        renderer = f"gsplat {gsplat.__version__}" if args.device.startswith("cuda") else "nzip.scenes.render"
    except ImportError:
        renderer = "nzip.scenes.render"
    rows = []
    work = Path(tempfile.mkdtemp())

    def save(rows: list) -> dict:
        result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                  "renderer": renderer, "torch": torch.__version__, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return result

    for name, scene in each_scene(args.scenes, args.names.split(",")):
        cams = orbit(scene, 24, 256, 192)
        targets = renders(scene, cams, device=args.device)
        for level in args.levels.split(","):
            plain = encode_scene(scene, work / "plain.nzs", level=level, overwrite=True)
            base = fidelity(targets, decode_scene(work / "plain.nzs"), cams, device=args.device)
            for steps in (int(s) for s in args.steps.split(",")):
                for lr in (float(x) for x in args.lr.split(",")):
                    refine.DEFAULT_LR = lr
                    t0 = time.perf_counter()
                    rep = encode_scene(scene, work / "refined.nzs", level=level, overwrite=True, refine=steps,
                                       device=args.device)
                    seconds = time.perf_counter() - t0 - plain["seconds"]
                    got = fidelity(targets, decode_scene(work / "refined.nzs"), cams, device=args.device)
                    with container.Container(work / "refined.nzs") as box:  # the steps the validation kept
                        kept = box.metadata().get("refined_kept", 0)
                    row = {"scene": name, "gaussians": len(scene), "level": level, "bytes": plain["bytes"],
                           "psnr": base["psnr"], "ssim": base["ssim"], "steps": steps, "lr": lr,
                           "kept": kept, "refined_bytes": rep["bytes"], "refined_psnr": got["psnr"], "refined_ssim": got["ssim"],
                           "seconds": seconds}
                    rows.append(row)
                    save(rows)  # after every row: a run cut short keeps what it measured
                    print(f"{name:24s} {level:7s} {plain['bytes']:8d} B {base['psnr']:6.2f} dB -> steps {steps:5d} "
                          f"lr {lr:g} (kept {kept}): {rep['bytes']:8d} B {got['psnr']:6.2f} dB ({got['psnr'] - base['psnr']:+.2f}) "
                          f"{seconds:6.1f} s", flush=True)
    result = save(rows)
    print(table(result))
    if args.readme:
        replace_table("refine", table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
