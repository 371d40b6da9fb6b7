"""Scale and rotation: nzip's grids against Compact 3DGS's residual codebooks, by rendering.

    python tools/bench_geometry_vq.py [--names a.ply,b.ply] [--stages 2,4,6] [--level medium]
                                      [--views 24] [--size 256x192] [--json F] [--readme]

Compact 3D Gaussian Splatting (Lee et al. 2024) stores each Gaussian's scale and rotation as
residual vector quantisation: several stages of small codebooks (6 stages of 64), each
stage coding what the ones before left over. nzip's levels store them on grids instead
(importance and rotation tiers, canonical frames, shape-aware rounding) and offer the
codebooks as an option (encode_scene's geometry="codebooks", `nzip pack --geometry
codebooks`). This bench is the evidence for the default: every scene is packed at the
level with each geometry coding (and with the grids' scale step halved and a rotation bit
more, to compare at about the 6 stages' bytes), real files through the real decoder, everything else
(positions, opacity, colour, which Gaussians are kept) coded alike. Per coding: the bytes
of the file's scale and rotation arrays, the whole file, and the fidelity of the whole
scene (tools/bench_scenes.py's orbit).
Results: bench/results/geometry_vq.json, a table (and with --readme the README's).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nzip.scenes import codec  # noqa: E402
from nzip.scenes.codec import GEOMETRY_CODEWORDS, decode_scene, encode_scene  # noqa: E402
from nzip.scenes.fidelity import fidelity, renders  # noqa: E402
from nzip.scenes.render import orbit  # noqa: E402
from bench_scenes import each_scene  # noqa: E402
from readme_table import replace_table  # noqa: E402

SCENES = ["v3dg_donut_fused.ply", "guitar_decoded_inria.ply", "gsplat_alti_sh3.ply", "try_iter7000_sh3.ply"]
GEOMETRY = ("scale", "rotation")  # the .nzs arrays named so (their groups in encode_scene's parts)


def table(result: dict) -> str:
    lines = [f"Scale and rotation at `{result['level']}` (everything else coded alike); fidelity from "
             f"{result['views']} orbit cameras at {result['size']}; codebooks of {result['codewords']} codewords.", "",
             "| scene | geometry coding | geometry bytes | B/Gaussian | file bytes | PSNR dB | SSIM |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        first = True
        for c in r["codings"]:
            lines.append(f"| {r['scene'] if first else ''} | {c['coding']} | {c['bytes']} | "
                         f"{c['bytes'] / r['kept']:.2f} | {c['file']} | {c['psnr']:.2f} | {c['ssim']:.4f} |")
            first = False
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=str(ROOT.parent / "shared" / "data" / "scenes"))
    ap.add_argument("--names", default=",".join(SCENES))
    ap.add_argument("--stages", default="2,4,6")
    ap.add_argument("--level", default="medium")
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "geometry_vq.json"))
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    result = {"level": args.level, "views": args.views, "size": args.size, "codewords": GEOMETRY_CODEWORDS, "rows": []}
    path = Path(tempfile.mkdtemp()) / "scene.nzs"
    # the grids with the scale step halved and a rotation bit more: about the 6 stages' bytes
    finer = {"scale_step": codec.LEVELS[args.level]["scale_step"] / 2,
             "rotation_bits": codec.LEVELS[args.level]["rotation_bits"] + 1}
    codings = [("nzip grids", {"geometry": "grids"}), ("nzip grids, finer steps", {"geometry": "grids", "finer": finer})]
    codings += [(f"{s} x {GEOMETRY_CODEWORDS} residual codebooks", {"geometry": "codebooks", "geometry_stages": int(s)})
                for s in args.stages.split(",")]
    for name, scene in each_scene(args.scenes, args.names.split(",")):
        cams = orbit(scene, args.views, width, height)
        targets = renders(scene, cams)
        row = {"scene": name, "gaussians": len(scene), "codings": []}
        for label, options in codings:
            level = dict(codec.LEVELS[args.level])
            codec.LEVELS[args.level] = {**level, **options.get("finer", {})}
            try:
                report = encode_scene(scene, path, level=args.level, overwrite=True,
                                      **{k: v for k, v in options.items() if k != "finer"})
            finally:
                codec.LEVELS[args.level] = level
            f = fidelity(targets, decode_scene(path), cams)
            geometry = sum(report["parts"].get(g, 0) for g in GEOMETRY)
            row["kept"] = report["kept"]
            row["codings"].append({"coding": label, "bytes": geometry, "file": report["bytes"],
                                   "psnr": f["psnr"], "ssim": f["ssim"]})
            print(f"{name:26s} {label:32s} {geometry:9d} B {report['bytes']:10d} B {f['psnr']:6.2f} dB", flush=True)
        result["rows"].append(row)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")  # after every scene
    print(table(result))
    if args.readme:
        replace_table("geometry_vq", table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
