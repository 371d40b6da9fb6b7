"""Gaussian-splat scenes: nzip's levels against .spz, judged by rendering, in one run.

    python tools/bench_scenes.py [--views 24] [--size 256x192] [--readme]

Every scene under ../shared/data/scenes (the PlayCanvas-compressed .ply files through their
decoded INRIA copies; see that folder's README). For each: the .ply size (for pod_sh3_v2.spz,
the size of the INRIA .ply it decodes to), the .spz peer (Niantic's quantisation, version 3,
written by nzip.scenes.spz with the reference encoder's settings; for pod the file itself, and
beside it spz v3 re-encoding it),
and nzip's levels (and, for a scene on .spz's grids, lossless with --any-order): bytes, size vs .ply and vs .spz, fidelity (PSNR/SSIM between renders
of the original and of the decoded scene from an orbit of cameras, nzip.scenes.fidelity),
pack and unpack time. Then the speed check: a synthetic SH3 scene of 1M Gaussians (the
gsplat scene resampled with jitter) packed at medium and unpacked. Results:
bench/results/scenes.json, a table (and with --readme the README's), a render strip
(bench/results/scene_strip.png).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nzip.parallel import cores  # noqa: E402
from nzip.scenes import Scene, read_scene, write_scene  # noqa: E402
from nzip.scenes.codec import decode_scene, encode_scene  # noqa: E402
from nzip.scenes.fidelity import attribute_errors, fidelity, renders, side_by_side, write_png  # noqa: E402
from nzip.scenes.render import orbit  # noqa: E402
from nzip.scenes import spz_lossless  # noqa: E402
from nzip.scenes.spz import read_spz, write_spz  # noqa: E402
from readme_table import replace_table  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "scenes"
SCENES = ["v3dg_donut_fused.ply", "guitar_decoded_inria.ply", "biker_decoded_inria.ply",
          "gsplat_alti_sh3.ply", "try_iter7000_sh3.ply", "pod_sh3_v2.spz"]
LEVELS = ["low", "compact", "medium", "high", "lossless"]


def each_scene(folder: str | Path, names: list[str] = SCENES):
    """(name, scene) for each of `names` found under `folder`; says which are not there."""
    for name in names:
        path = Path(folder) / name
        if not path.exists():
            print(f"skipping {name}: not under {folder}")
            continue
        yield name, read_scene(path)


def bench_scene(name: str, views: int, size: tuple[int, int], work: Path) -> dict:
    path = DATA / name
    scene = read_scene(path)
    ply = work / "x.ply"
    write_scene(scene, ply)
    ply_bytes = path.stat().st_size if name.endswith(".ply") else ply.stat().st_size
    cams = orbit(scene, views, *size)
    targets = renders(scene, cams)
    extent = float(np.linalg.norm(scene.positions.max(axis=0) - scene.positions.min(axis=0)))
    row = {"scene": name, "gaussians": len(scene), "sh_degree": scene.sh_degree, "ply_bytes": ply_bytes,
           "extent": extent, "levels": {}}
    if name.endswith(".spz"):
        spz_path, spz_scene = path, scene
        # the file is the scene, so its own fidelity is exact; spz's current encoder (v3, as
        # for the other scenes) re-encoding it is measured beside it
        again = work / "again.spz"
        write_spz(scene, again, version=3)
        f = fidelity(targets, read_spz(again), cams)
        row["spz_reencoded"] = {"version": 3, "bytes": again.stat().st_size, "psnr": f["psnr"], "ssim": f["ssim"],
                                "exact": f["exact"]}
    else:
        spz_path = work / "x.spz"
        t0 = time.perf_counter()
        write_spz(scene, spz_path, version=3)
        spz_scene = read_spz(spz_path)
        row["spz_seconds"] = time.perf_counter() - t0
    f = fidelity(targets, spz_scene, cams)
    row["spz"] = {"bytes": spz_path.stat().st_size, "psnr": f["psnr"], "ssim": f["ssim"], "exact": f["exact"],
                  "attributes": attribute_errors(scene, spz_scene)}
    # on .spz's grids, lossless stores spz's integers; it may also sort the Gaussians
    methods = LEVELS + (["lossless any-order"] if spz_lossless.on_grid(scene) else [])
    for level in methods:
        out = work / f"x.{level.replace(' ', '_')}.nzs"
        t0 = time.perf_counter()
        report = encode_scene(scene, out, level=level.split()[0], overwrite=True, any_order=level.endswith("any-order"))
        pack_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = decode_scene(out)
        unpack_s = time.perf_counter() - t0
        f = fidelity(targets, back, cams)
        if level.endswith("any-order"):  # ties in depth need views along the grid's axes or diagonals
            shifted = orbit(scene, views, *size, phase=0.5)
            g = fidelity(scene, back, shifted)
            row["any_order_half_step_orbit"] = {"psnr": g["psnr"], "exact": g["exact"],
                                                "views_at_100_db": sum(v["psnr"] == 100 for v in g["per_view"])}
        row["levels"][level] = {"bytes": report["bytes"], "kept": report["kept"], "psnr": f["psnr"], "ssim": f["ssim"],
                                "exact": f["exact"], "bits_exact": report["exact"],
                                "pack_s": pack_s, "unpack_s": unpack_s, "parts": report["parts"],
                                "attributes": attribute_errors(scene, back)}
        print(f"  {name:26s} {level:8s} {report['bytes']:9d} B  {ply_bytes / report['bytes']:6.1f}x ply  "
              f"{report['bytes'] / row['spz']['bytes']:.2f}x spz  PSNR {f['psnr']:.2f}", file=sys.stderr, flush=True)
    return row


def synthetic(n: int, seed: int = 0) -> Scene:
    """A real SH3 scene resampled to n Gaussians, positions jittered by a fraction of their spacing."""
    base = read_scene(DATA / "gsplat_alti_sh3.ply")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base), n)
    spread = np.percentile(base.positions, 95, axis=0) - np.percentile(base.positions, 5, axis=0)
    jitter = rng.normal(0, 1, (n, 3)).astype(np.float32) * spread.astype(np.float32) * 1e-3
    return Scene(positions=base.positions[pick] + jitter, sh_dc=base.sh_dc[pick], sh_rest=base.sh_rest[pick],
                 opacity=base.opacity[pick], scales=base.scales[pick], rotations=base.rotations[pick])


def speed(work: Path, n: int = 1 << 20) -> dict:
    scene = synthetic(n)
    t0 = time.perf_counter()
    report = encode_scene(scene, work / "big.nzs", level="medium", overwrite=True)
    pack_s = time.perf_counter() - t0
    times = []
    for _ in range(5):  # the median: single runs on these 2 shared cores swing by 2x
        t0 = time.perf_counter()
        decode_scene(work / "big.nzs")
        times.append(time.perf_counter() - t0)
    unpack_s = statistics.median(times)
    return {"gaussians": n, "bytes": report["bytes"], "pack_s": pack_s, "unpack_s": unpack_s,
            "unpack_runs_s": times, "unpack_gaussians_per_s": n / unpack_s}


def _db(v: dict) -> str:
    """The PSNR column: "exact" where every render came out identical."""
    return "exact" if v.get("exact") else f"{v['psnr']:.2f}"


def table(results: dict) -> str:
    lines = [f"Renders: {results['views']} orbit cameras at {results['size']}; PSNR/SSIM against renders of the original "
             "(each view's PSNR at most 100 dB; exact: every render identical).", "",
             "| scene | Gaussians | SH | method | bytes | vs .ply | vs .spz | PSNR dB | SSIM | pack s | unpack s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["scenes"]:
        s = r["spz"]
        lines.append(f"| {r['scene']} | {r['gaussians']} | {r['sh_degree']} | spz | {s['bytes']} | "
                     f"{r['ply_bytes'] / s['bytes']:.1f}x | 1.00x | {_db(s)} | {s['ssim']:.4f} | | |")
        a = r.get("spz_reencoded")
        if a:
            lines.append(f"| | | | spz v{a['version']} re-encoding it | {a['bytes']} | {r['ply_bytes'] / a['bytes']:.1f}x | "
                         f"{a['bytes'] / s['bytes']:.2f}x | {_db(a)} | {a['ssim']:.4f} | | |")
        for level, v in r["levels"].items():
            # a lossy level stored losslessly (sorted), that file being the smaller
            label = f"{level} (stored lossless, sorted)" if v.get("bits_exact") and level in LEVELS[:-1] else level
            lines.append(f"| | | | nzip {label} | {v['bytes']} | {r['ply_bytes'] / v['bytes']:.1f}x | "
                         f"{v['bytes'] / s['bytes']:.2f}x | {_db(v)} | {v['ssim']:.4f} | {v['pack_s']:.2f} | "
                         f"{v['unpack_s']:.3f} |")
    for r in results["scenes"]:
        h = r.get("any_order_half_step_orbit")
        if h:
            lines += ["", f"{r['scene']}, lossless any-order, on the orbit turned half a step (no camera along the grid's "
                          f"axes or diagonals): {h['psnr']:.2f} dB, {h['views_at_100_db']} of {results['views']} views at "
                          f"100 dB (identical to float rounding)."]
    lines += ["", "Per-attribute errors, rms over the decoded Gaussians, each matched to its original "
                  "(nzip.scenes.fidelity.attribute_errors): position in units of the scene's extent "
                  "(its bounding box's diagonal), opacity as alpha, colour as the DC's RGB, covariance as "
                  "|S_a - S_b| / |S_a|.", "",
              "| scene | method | position | opacity | colour | SH rest | covariance |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in results["scenes"]:
        first = True
        for label, v in [("spz", r["spz"])] + [(f"nzip {k}", v) for k, v in r["levels"].items()]:
            e = v.get("attributes")
            if not e:
                continue
            rest = f"{e['sh_rest']['rms']:.4f}" if "sh_rest" in e and r["sh_degree"] else ""
            lines.append(f"| {r['scene'] if first else ''} | {label} | {e['position']['rms'] / r['extent']:.2e} | "
                         f"{e['opacity']['rms']:.4f} | {e['colour']['rms']:.4f} | {rest} | {e['covariance']['rms']:.4f} |")
            first = False
    sp = results.get("speed")
    if sp:
        lines += ["", f"Speed (synthetic SH3 scene of {sp['gaussians']} Gaussians, medium): pack {sp['pack_s']:.1f} s, "
                      f"unpack {sp['unpack_s']:.2f} s ({sp['unpack_gaussians_per_s'] / 1e6:.1f} M Gaussians/s), "
                      f"{sp['bytes'] / sp['gaussians']:.1f} B/Gaussian."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--scenes", default=",".join(SCENES))
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scenes.json"))
    ap.add_argument("--readme", action="store_true", help="also replace the table in README.md")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the scenes run in --out's results (keeping the others and the speed check)")
    ap.add_argument("--readme-from", metavar="RESULTS_JSON", help="only rewrite README.md's table from a results file")
    args = ap.parse_args()
    if args.readme_from:
        return replace_table("scenes", table(json.loads(Path(args.readme_from).read_text())))
    torch.set_num_threads(cores())
    size = tuple(int(v) for v in args.size.lower().split("x"))
    results = {"views": args.views, "size": args.size, "scenes": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.scenes.split(","):
            results["scenes"].append(bench_scene(name, args.views, size, work))
        if not args.no_speed:
            results["speed"] = speed(work)
        donut = read_scene(DATA / "v3dg_donut_fused.ply")
        encode_scene(donut, work / "d.nzs", level="medium", overwrite=True)
        write_png(side_by_side(donut, decode_scene(work / "d.nzs"), orbit(donut, 4, 256, 192)),
                  ROOT / "bench" / "results" / "scene_strip.png")
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        if (old["views"], old["size"]) != (results["views"], results["size"]):
            raise SystemExit(f"--merge: {args.out} was rendered with other cameras")
        new = {r["scene"]: r for r in results["scenes"]}
        old["scenes"] = [new.pop(r["scene"], r) for r in old["scenes"]] + list(new.values())
        old.update({k: v for k, v in results.items() if k == "speed"})
        results = old
    text = table(results)
    print(text)
    Path(args.out).write_text(json.dumps(results, indent=1))
    if args.readme:
        replace_table("scenes", text)


if __name__ == "__main__":
    main()
