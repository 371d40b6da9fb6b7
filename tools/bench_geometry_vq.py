"""Scale and rotation: nzip's grids against Compact 3DGS's residual codebooks, by rendering.

    python tools/bench_geometry_vq.py [--names a.ply,b.ply] [--stages 2,4,6] [--codewords 64]
                                      [--views 24] [--size 256x192] [--json F] [--readme]

Compact 3D Gaussian Splatting (Lee et al. 2024) stores each Gaussian's scale and rotation as
residual vector quantisation: several stages of small codebooks (6 stages of 64), each
stage coding what the ones before left over. nzip's levels store them on grids instead
(importance and rotation tiers, canonical frames, shape-aware rounding). This bench is the
evidence for that choice. For every scene it packs `medium` and decodes it, then replaces only
the scales and rotations of the decoded Gaussians with the residual codebooks' (fitted post
hoc by k-means on the original's log scales and unit quaternions with w >= 0; unweighted as
in the paper, and weighted by each Gaussian's share of a render as nzip's SH codebooks are).
Everything else (positions, opacity, colour, which Gaussians are kept) stays as medium
decoded it. Per coding: the geometry's bytes (indices through the smallest of nzip's
lossless codecs, float16 codebooks; for the grids, the scale and rotation arrays of the
.nzs file) and the fidelity of the whole scene (tools/bench_scenes.py's orbit).
Results: bench/results/geometry_vq.json, a table (and with --readme the README's).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nzip.formats import container  # noqa: E402
from nzip.scenes import Scene  # noqa: E402
from nzip.scenes.codec import LEVELS, _head, _lossy_items, _seen_factor, _size, _sized_item, decode_scene  # noqa: E402
from nzip.scenes.scene import alpha_of  # noqa: E402
from nzip.scenes.fidelity import fidelity, renders  # noqa: E402
from nzip.scenes.quantize import residual_vq, rvq_decode  # noqa: E402
from nzip.scenes.render import orbit  # noqa: E402
from nzip.scenes.visibility import VIEWS, visibility  # noqa: E402
from bench_scenes import each_scene  # noqa: E402
from readme_table import replace_table  # noqa: E402

SCENES = ["v3dg_donut_fused.ply", "guitar_decoded_inria.ply", "gsplat_alti_sh3.ply", "try_iter7000_sh3.ply"]
GEOMETRY = ("scale", "rotation")  # the .nzs arrays named so (not the tiers, which DC shares)


def medium(scene: Scene, path: Path) -> tuple[Scene, np.ndarray, int]:
    """(medium decoded, the original's row of each decoded Gaussian, the grids' scale and
    rotation bytes)."""
    meta = _head(scene, "medium")
    rows: list = []
    items = _lossy_items(scene, LEVELS["medium"], meta, 0, visibility(scene, VIEWS), rows=rows)
    header = container.write(path, items, metadata=meta, overwrite=True, header_room=0)
    grid_bytes = sum(e["size"] for e in header["tensors"] if e["name"].split(".")[0] in GEOMETRY)
    return decode_scene(path), rows[0], grid_bytes


def codebooks(values: np.ndarray, stages: int, k: int, weights: torch.Tensor | None) -> tuple[np.ndarray, int]:
    """(the values through `stages` residual codebooks of k codewords, their bytes)."""
    books, indices = residual_vq(torch.as_tensor(values, dtype=torch.float32), [k] * stages, 0, weights=weights)
    books16 = [b.numpy().astype(np.float16) for b in books]
    size = sum(b.nbytes for b in books16)
    size += sum(_sized_item(f"i{s}", i.numpy().astype(np.uint8))[1] for s, i in enumerate(indices))
    return rvq_decode([b.astype(np.float32) for b in books16], [i.numpy() for i in indices]), size


def table(result: dict) -> str:
    lines = [f"Scale and rotation at `medium` (everything else as medium decodes it); fidelity from "
             f"{result['views']} orbit cameras at {result['size']}; codebooks of {result['codewords']} codewords.", "",
             "| scene | geometry coding | geometry bytes | B/Gaussian | PSNR dB | SSIM |",
             "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        first = True
        for c in r["codings"]:
            lines.append(f"| {r['scene'] if first else ''} | {c['coding']} | {c['bytes']} | "
                         f"{c['bytes'] / r['kept']:.2f} | {c['psnr']:.2f} | {c['ssim']:.4f} |")
            first = False
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=str(ROOT.parent / "shared" / "data" / "scenes"))
    ap.add_argument("--names", default=",".join(SCENES))
    ap.add_argument("--stages", default="2,4,6")
    ap.add_argument("--codewords", type=int, default=64)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "geometry_vq.json"))
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    result = {"views": args.views, "size": args.size, "codewords": args.codewords, "rows": []}
    work = Path(tempfile.mkdtemp())
    for name, scene in each_scene(args.scenes, args.names.split(",")):
        cams = orbit(scene, args.views, width, height)
        targets = renders(scene, cams)
        decoded, rows, grid_bytes = medium(scene, work / "medium.nzs")
        f = fidelity(targets, decoded, cams)
        codings = [{"coding": "nzip grids (medium)", "bytes": grid_bytes, "psnr": f["psnr"], "ssim": f["ssim"]}]
        print(f"{name:26s} grids {grid_bytes:9d} B {f['psnr']:6.2f} dB", flush=True)
        log_scales = scene.scales[rows].astype(np.float64)
        q = scene.rotations[rows].astype(np.float64)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        q = np.where(q[:, :1] < 0, -q, q)  # w >= 0: q and -q are the same rotation
        alpha, size = alpha_of(scene.opacity[rows]), _size(scene.scales[rows])
        weight = (alpha * size * _seen_factor(alpha, size, None)) ** 2
        weight = torch.as_tensor(weight / max(weight.mean(), 1e-300), dtype=torch.float32)
        for weighted in (False, True):
            for stages in (int(s) for s in args.stages.split(",")):
                w = weight if weighted else None
                s_back, s_bytes = codebooks(log_scales, stages, args.codewords, w)
                r_back, r_bytes = codebooks(q, stages, args.codewords, w)
                other = Scene(decoded.positions, decoded.sh_dc, decoded.sh_rest, decoded.opacity,
                              s_back.astype(np.float32), r_back.astype(np.float32))
                g = fidelity(targets, other, cams)
                label = f"{stages} x {args.codewords} residual codebooks{', weighted' if weighted else ''}"
                codings.append({"coding": label, "bytes": s_bytes + r_bytes, "psnr": g["psnr"], "ssim": g["ssim"]})
                print(f"{name:26s} {label:40s} {s_bytes + r_bytes:9d} B {g['psnr']:6.2f} dB", flush=True)
        result["rows"].append({"scene": name, "gaussians": len(scene), "kept": len(decoded), "codings": codings})
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")  # after every scene
    print(table(result))
    if args.readme:
        replace_table("geometry_vq", table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
