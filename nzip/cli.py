"""The `nzip` command, in the manner of zstd/xz: keeps inputs, -o, -f, -T, -q/-v.

    nzip pack model.safetensors            -> model.nz
    nzip unpack model.nz                   -> model.safetensors (byte for byte)
    nzip pack MODEL_DIR                    -> MODEL_DIR.nz/ (every safetensors shard packed)
    nzip unpack MODEL_DIR.nz               -> MODEL_DIR/ (every file byte for byte)
    nzip pack --format dfloat11 MODEL_DIR  -> MODEL_DIR-dfloat11/ (the DFloat11 project's layout)
    nzip unpack DF11_DIR                   -> DF11_DIR-bf16/ (plain bf16 safetensors)
    nzip pack scene.ply [--quality medium] [--refine 200]  -> scene.nzs (Gaussian splats; .spz in too)
    nzip unpack scene.nzs [-o scene.spz]   -> scene.ply (or .spz)
    nzip scene-eval scene.ply scene.nzs    -> PSNR/SSIM of renders from 24 cameras
    nzip pack photo.png [--quality 3]     -> photo.nzi (learned image codec, lossy)
    nzip unpack photo.nzi [-o out.png]     -> out.png
    nzip train-pc digits.npy -o model.nzpc -> a probabilistic circuit for lossless coding
    nzip pack digits.npy --codec pc [--model model.nzpc]  -> digits.nzf (one frame; any codec)
    nzip unpack digits.nzf [-o out.npy]    -> the array, bit for bit
    nzip info model.nz
    nzip verify model.nz | MODEL_DIR.nz
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from . import __version__
from .codecs import available
from .codecs.api import check_shape
from .errors import NzipError
from .formats import container, safetensors
from .formats.atomic import atomic_write


def _progress(args, total: int, desc: str, unit: str = "B"):
    """A tqdm bar on a terminal (unless -q); otherwise a no-op."""
    if args.quiet or not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, leave=False)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def _codec_arg(value: str):
    if value == "auto":
        return "auto"
    if value.startswith("{"):
        return json.loads(value)
    return value


def cmd_pack(args) -> None:
    src = Path(args.input)
    if args.format == "dfloat11":
        return _pack_dfloat11_folder(args, src)
    if src.is_dir():
        return _pack_folder(args, src)
    if src.suffix.lower() in SCENE_SUFFIXES:
        return _pack_scene(args, src)
    if args.refine or args.device or args.any_order or args.geometry or args.geometry_stages:
        raise NzipError("--refine, --device, --any-order and --geometry are for Gaussian-splat scenes (.ply, .spz)")
    if src.suffix.lower() in IMAGE_SUFFIXES:
        return _pack_image(args, src)
    if src.suffix.lower() == ".npy":
        return _pack_array(args, src)
    dst = Path(args.output) if args.output else src.with_suffix(".nz")
    if dst.resolve() == src.resolve():
        raise NzipError("output would overwrite the input")
    t0 = time.perf_counter()
    with _progress(args, src.stat().st_size, f"pack {src.name}") as bar:
        safetensors.pack(src, dst, codec=_codec_arg(args.codec), threads=args.threads,
                         overwrite=args.force, progress=bar.update if bar else None)
    _report(args, src, dst, time.perf_counter() - t0)


SCENE_SUFFIXES = (".ply", ".spz")
SCENE_LEVELS = ("low", "compact", "medium", "high", "lossless")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def _read_image(path: Path):
    try:
        from PIL import Image
    except ImportError:
        raise NzipError("reading and writing images needs Pillow: pip install pillow") from None
    import numpy as np

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise NzipError(f"{path}: not a readable image ({exc})") from None


def _pack_image(args, src: Path) -> None:
    from .codecs import encode, get

    dst = Path(args.output) if args.output else src.with_suffix(".nzi")
    quality = args.quality or "3"
    if not quality.isdigit():
        raise NzipError(f"--quality for images is one of {list(get('image-hyperprior').qualities)}, got {quality!r}")
    t0 = time.perf_counter()
    image = _read_image(src)
    blob = encode(image, "image-hyperprior", quality=int(quality), model=args.model or "mbt2018-mean",
                  threads=args.threads)
    with atomic_write(dst, overwrite=args.force) as f:
        f.write(blob)
    h, w = image.shape[:2]
    _say(args, f"{src} : {w}x{h}, quality {quality}: {len(blob) * 8 / (h * w):.3f} bits/pixel "
               f"({src.stat().st_size} => {len(blob)} bytes, {dst}) in {time.perf_counter() - t0:.2f} s")


def _unpack_image(args, src: Path) -> None:
    from PIL import Image

    from .codecs import decode

    dst = Path(args.output) if args.output else src.with_suffix(".png")
    if dst.suffix.lower() not in IMAGE_SUFFIXES:
        raise NzipError(f"{dst}: an image unpacks to one of {', '.join(IMAGE_SUFFIXES)}")
    t0 = time.perf_counter()
    image = decode(src.read_bytes(), threads=args.threads)
    if getattr(image, "ndim", 0) != 3 or image.shape[2] != 3 or image.dtype.name != "uint8":
        raise NzipError(f"{src} does not hold an image")
    with atomic_write(dst, overwrite=args.force) as f:
        Image.fromarray(image).save(f, format=Image.registered_extensions()[dst.suffix.lower()])
    _say(args, f"{src} : {image.shape[1]}x{image.shape[0]} -> {dst} in {time.perf_counter() - t0:.2f} s")


def _read_npy(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise NzipError(f"{path}: not a readable .npy array ({exc})") from None


def _pack_array(args, src: Path) -> None:
    """One .npy array -> one nzip frame (.nzf); --codec pc codes it with a circuit."""
    from .codecs import encode

    dst = Path(args.output) if args.output else src.with_suffix(".nzf")
    codec = _codec_arg(args.codec)
    codec = "zstd" if codec == "auto" else codec
    params = {"model": args.model} if args.model and codec == "pc" else {}
    if args.model and codec != "pc":
        raise NzipError("--model applies to images and to --codec pc")
    t0 = time.perf_counter()
    array = _read_npy(src)
    blob = encode(array, codec, threads=args.threads, **params)
    with atomic_write(dst, overwrite=args.force) as f:
        f.write(blob)
    bits = len(blob) * 8 / array.size if array.size else 0
    _say(args, f"{src} : {len(blob) / max(array.nbytes, 1):.2%} ({array.nbytes} => {len(blob)} bytes, "
               f"{bits:.3f} bits per value, {dst}) in {time.perf_counter() - t0:.2f} s")


def _unpack_array(args, src: Path) -> None:
    import numpy as np

    from .codecs import decode
    from .codecs.circuits import load_model

    if args.model:  # frames coded with a model of one's own name it by identity
        load_model(args.model)
    dst = Path(args.output) if args.output else src.with_suffix(".npy")
    t0 = time.perf_counter()
    array = np.asarray(decode(src.read_bytes(), threads=args.threads))
    with atomic_write(dst, overwrite=args.force) as f:
        np.save(f, array, allow_pickle=False)
    _say(args, f"{src} : {array.dtype} {'x'.join(map(str, array.shape))} -> {dst} in {time.perf_counter() - t0:.2f} s")


def cmd_train_pc(args) -> None:
    import numpy as np

    from .codecs.circuits import model_file
    from .codecs.circuits.quantized import MAX_HIDDEN, quantize
    from .codecs.circuits.train import train

    src = Path(args.input)
    data = _read_npy(src)
    if data.dtype not in (np.uint8, np.uint16) or data.ndim < 2 or len(data) < 2:
        raise NzipError(f"{src}: train-pc takes n >= 2 samples of uint8 or uint16 (n x H x W or n x D), "
                        f"got {data.dtype} {data.shape}")
    if not 1 <= args.hidden <= MAX_HIDDEN:
        raise NzipError(f"--hidden must be 1..{MAX_HIDDEN}")
    dst = Path(args.output) if args.output else src.with_suffix(".nzpc")
    if dst.exists() and not args.force:
        raise NzipError(f"{dst} already exists (use -f to replace it)")
    lo, hi = (0, 255) if data.dtype == np.uint8 else (int(data.min()), int(data.max()))
    flat = (data.reshape(len(data), -1).astype(np.int64) - lo)
    image_shape = tuple(data.shape[1:]) if data.ndim == 3 else None
    t0 = time.perf_counter()
    model = train(flat, args.hidden, shared=args.shared, epochs=args.epochs, full_batch=args.full_batch,
                  values=hi - lo + 1, image_shape=image_shape, shift=args.shift if image_shape else 0,
                  device=args.device, log=None if args.quiet else (lambda line: print(line, file=sys.stderr)))
    training = dict(data=src.name, hidden=args.hidden, shared=args.shared, epochs=args.epochs,
                    full_batch=args.full_batch, shift=args.shift if image_shape else 0)
    coded = quantize(model, data_shape=tuple(data.shape[1:]), value_range=(lo, hi), training=training)
    model_file.save(coded, dst, overwrite=args.force)
    _say(args, f"{src} : {len(data)} samples of {'x'.join(map(str, data.shape[1:]))}, values {lo}..{hi} -> {dst} "
               f"({dst.stat().st_size} bytes) in {time.perf_counter() - t0:.1f} s")


def read_any_scene(path: Path):
    """A scene from .ply, .spz or .nzs."""
    from .scenes import read_scene
    from .scenes.codec import decode_scene

    return decode_scene(path) if path.suffix.lower() == ".nzs" else read_scene(path)


def _pack_scene(args, src: Path) -> None:
    from .scenes import read_scene
    from .scenes.codec import GEOMETRY_STAGES, encode_scene

    dst = Path(args.output) if args.output else src.with_suffix(".nzs")
    if dst.exists() and not args.force:
        raise NzipError(f"{dst} already exists (use -f to replace it)")
    t0 = time.perf_counter()
    scene = read_scene(src)
    level = args.quality or "medium"
    if level not in SCENE_LEVELS:
        raise NzipError(f"--quality for scenes is one of {', '.join(SCENE_LEVELS)}, got {level!r}")
    if args.any_order and level != "lossless":
        raise NzipError("--any-order is for --quality lossless (the lossy levels sort the Gaussians anyway)")
    if args.geometry_stages and args.geometry != "codebooks":
        raise NzipError("--geometry-stages is for --geometry codebooks")
    device = args.device or ("cuda" if args.refine and _cuda() else "cpu")
    steps = _progress(args, args.refine, "refining codebooks", unit="step") if args.refine else contextlib.nullcontext()
    with steps as bar:
        report = encode_scene(scene, dst, level=level, overwrite=args.force, threads=args.threads,
                              refine=args.refine, device=device, views=args.views, any_order=args.any_order,
                              geometry=args.geometry or "grids", geometry_stages=args.geometry_stages or GEOMETRY_STAGES,
                              progress=(lambda step, loss: bar.update(1)) if bar is not None else None)
    a = src.stat().st_size
    _say(args, f"{src} : {len(scene)} Gaussians, SH degree {scene.sh_degree}, level {level}: "
               f"{a / report['bytes']:.1f}x smaller ({a} => {report['bytes']} bytes, "
               f"{report['bytes'] / len(scene):.1f} B/Gaussian, {report['kept']} kept"
               f"{', stored exactly: smaller than the lossy file' if report['exact'] and level != 'lossless' else ''}"
               f"{_refined_note(report['refined_kept'], args.refine)}"
               f") -> {dst} "
               f"in {time.perf_counter() - t0:.2f} s")


def _refined_note(kept: int | None, steps: int) -> str:
    if kept is None:
        return ""
    if kept == 0:
        return f", k-means codebooks kept: {steps} refinement steps rendered no closer"
    return f", codebooks refined ({kept} of {steps} steps rendered closest)"


def _unpack_scene(args, src: Path) -> None:
    from .scenes import write_scene
    from .scenes.codec import decode_scene

    dst = Path(args.output) if args.output else src.with_suffix(".ply")
    if dst.suffix.lower() not in SCENE_SUFFIXES:
        raise NzipError(f"{dst}: a scene unpacks to .ply or .spz")
    if dst.exists() and not args.force:
        raise NzipError(f"{dst} already exists (use -f to replace it)")
    t0 = time.perf_counter()
    scene = decode_scene(src, threads=args.threads)
    options = {}
    if dst.suffix.lower() == ".spz":  # a scene kept on .spz's grids goes back onto the same ones
        from .formats import container

        with container.Container(src) as box:
            grid = box.metadata().get("spz")
        if grid:
            options = {"version": int(grid["version"]), "fractional_bits": int(grid["fractional_bits"])}
    write_scene(scene, dst, overwrite=args.force, **options)
    _say(args, f"{src} : {len(scene)} Gaussians -> {dst} in {time.perf_counter() - t0:.2f} s")


def cmd_scene_eval(args) -> None:
    from .scenes.fidelity import attribute_errors, cameras_for, fidelity, side_by_side, write_png

    original, decoded = read_any_scene(Path(args.original)), read_any_scene(Path(args.decoded))
    width, height = (int(v) for v in args.size.lower().split("x"))
    cams = cameras_for(original, args.original, args.views, width, height)
    report = fidelity(original, decoded, cams)
    errors = attribute_errors(original, decoded)
    if args.png:
        write_png(side_by_side(original, decoded, cams), args.png)
    if args.json:
        print(json.dumps({"psnr": report["psnr"], "ssim": report["ssim"], "views": report["views"],
                          "exact": report["exact"], "gaussians": [len(original), len(decoded)], "attributes": errors}))
    else:
        same = ", every render identical" if report["exact"] else ""
        print(f"PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f} over {report['views']} views "
              f"({len(original)} vs {len(decoded)} Gaussians{same})")
        names = [k for k in ("position", "opacity", "colour", "sh_rest", "covariance") if k in errors]
        print("per attribute (rms / max; each decoded Gaussian against the original it most likely came from): "
              + ", ".join(f"{k} {errors[k]['rms']:.3g} / {errors[k]['max']:.3g}" for k in names))


def _pack_folder(args, src: Path) -> None:
    from .formats import model_folder

    dst = Path(args.output) if args.output else src.with_name(src.name + model_folder.PACKED_SUFFIX)
    t0 = time.perf_counter()
    total = sum(f.stat().st_size for f in src.rglob("*.safetensors"))
    with _progress(args, total, f"pack {src.name}") as bar:
        s = model_folder.pack_folder(src, dst, codec=_codec_arg(args.codec), threads=args.threads,
                                     overwrite=args.force, progress=bar.update if bar else None)
    ratio = f"{s['packed_bytes'] / s['safetensors_bytes']:.2%}" if s["safetensors_bytes"] else "n/a"
    _say(args, f"{src} : {s['files']} files, safetensors to {ratio} ({s['safetensors_bytes']} => "
               f"{s['packed_bytes']} bytes) -> {dst} in {time.perf_counter() - t0:.2f} s")


def _unpack_folder(args, src: Path) -> None:
    from .formats import model_folder

    if args.output:
        dst = Path(args.output)
    elif src.name.endswith(model_folder.PACKED_SUFFIX):
        dst = src.with_name(src.name[: -len(model_folder.PACKED_SUFFIX)])
    else:
        dst = src.with_name(src.name + "-unpacked")
    t0 = time.perf_counter()
    manifest = model_folder.read_manifest(src)
    with _progress(args, sum(e["size"] for e in manifest["files"] if e["stored"] != e["path"]),
                   f"unpack {src.name}") as bar:
        s = model_folder.unpack_folder(src, dst, threads=args.threads, overwrite=args.force,
                                       progress=bar.update if bar else None)
    _say(args, f"{src} : {s['files']} files, {s['bytes']} bytes -> {dst} in {time.perf_counter() - t0:.2f} s")


def _pack_dfloat11_folder(args, src: Path) -> None:
    from .formats import dfloat11_checkpoint

    if not src.is_dir():
        raise NzipError(f"--format dfloat11 packs a Hugging Face model folder; {src} is not a folder")
    dst = Path(args.output) if args.output else src.with_name(src.name + "-dfloat11")
    t0 = time.perf_counter()
    total = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    with _progress(args, total, f"pack {src.name}") as bar:
        s = dfloat11_checkpoint.write_folder(src, dst, overwrite=args.force, progress=bar.update if bar else None)
    ratio = f"{s['compressed_bytes'] / s['bf16_bytes']:.2%}" if s["bf16_bytes"] else "n/a"
    _say(args, f"{src} : {s['modules']} bf16 weights to {ratio} ({s['bf16_bytes']} => {s['compressed_bytes']} bytes; "
               f"{s['kept_bytes']} bytes kept as they were) -> {dst} in {time.perf_counter() - t0:.2f} s")


def _unpack_dfloat11_folder(args, src: Path) -> None:
    from .formats import dfloat11_checkpoint

    dst = Path(args.output) if args.output else src.with_name(src.name + "-bf16")
    t0 = time.perf_counter()
    s = dfloat11_checkpoint.unpack_folder(src, dst, overwrite=args.force, threads=args.threads)
    _say(args, f"{src} : {s['tensors']} tensors, {s['bytes']} bytes -> {dst} in {time.perf_counter() - t0:.2f} s")


def cmd_unpack(args) -> None:
    src = Path(args.input)
    if src.is_dir():
        from .formats import dfloat11_checkpoint, model_folder

        if model_folder.is_packed(src):
            return _unpack_folder(args, src)
        if dfloat11_checkpoint.config_of(src) is None:
            raise NzipError(f"{src} is a folder but neither a packed folder (no {model_folder.MANIFEST}) "
                            "nor a DFloat11 checkpoint (config.json has no dfloat11_config)")
        return _unpack_dfloat11_folder(args, src)
    if src.suffix.lower() == ".nzs":
        return _unpack_scene(args, src)
    if src.suffix.lower() == ".nzi":
        return _unpack_image(args, src)
    if src.suffix.lower() == ".nzf":
        return _unpack_array(args, src)
    with container.Container(src) as box:
        if args.output:
            dst = Path(args.output)
        else:
            dst = src.with_suffix(".safetensors") if src.suffix == ".nz" else Path(str(src) + ".out")
        if dst.exists() and dst.resolve() == src.resolve():
            raise NzipError("output would overwrite the input")
        t0 = time.perf_counter()
        with _progress(args, box.header.get("source", {}).get("size", 0), f"unpack {src.name}") as bar:
            safetensors.unpack(box, dst, threads=args.threads, overwrite=args.force,
                               progress=bar.update if bar else None)
    _report(args, src, dst, time.perf_counter() - t0, packed=False)


def _report(args, src: Path, dst: Path, seconds: float, packed: bool = True) -> None:
    """zstd-style summary: the ratio when packing, just the sizes when unpacking."""
    a, b = src.stat().st_size, dst.stat().st_size
    if packed:
        ratio = f"{b / a:.2%}" if a else "n/a"
        _say(args, f"{src} : {ratio} ({a} => {b} bytes, {dst}) in {seconds:.2f} s")
    else:
        _say(args, f"{src} : {a} => {b} bytes ({dst}) in {seconds:.2f} s")


def cmd_info(args) -> None:
    with container.Container(args.input) as box:
        raw_total = packed_total = 0
        rows = []
        for name in box.keys():
            e = box.entry(name)
            dtype, _, count = check_shape(e["dtype"], e["shape"])
            raw = count * dtype.itemsize
            raw_total += raw
            packed_total += e.get("size", 0)
            codec = "ref" if "ref" in e else e["codec"]["id"]  # a reference into the base checkpoint
            rows.append((name, e["dtype"], "x".join(map(str, e["shape"])) or "scalar", codec, raw, e.get("size", 0)))
        if args.json:
            print(json.dumps({"tensors": len(rows), "raw_bytes": raw_total, "packed_bytes": packed_total,
                              "file_bytes": box.path.stat().st_size, "metadata": box.metadata(),
                              "entries": [dict(zip(("name", "dtype", "shape", "codec", "raw", "packed"), r))
                                          for r in rows]}, indent=1))
            return
        width = max([len(r[0]) for r in rows] + [4])
        print(f"{'name':<{width}}  {'dtype':<13} {'shape':<16} {'codec':<9} {'raw':>12} {'packed':>12}  ratio")
        for name, dtype, shape, codec, raw, packed in rows:
            ratio = f"{packed / raw:.4f}" if raw else "-"
            print(f"{name:<{width}}  {dtype:<13} {shape:<16} {codec:<9} {raw:>12} {packed:>12}  {ratio}")
        total_ratio = f"{packed_total / raw_total:.4f}" if raw_total else "-"
        print(f"{len(rows)} tensors, {raw_total} bytes raw, {packed_total} bytes packed ({total_ratio}), "
              f"file {box.path.stat().st_size} bytes")


def cmd_verify(args) -> None:
    t0 = time.perf_counter()
    if Path(args.input).is_dir():
        from .formats import model_folder

        n = model_folder.verify_folder(args.input, threads=args.threads)
        _say(args, f"{args.input}: OK ({n} files, every checksum and decode verified) "
                   f"in {time.perf_counter() - t0:.2f} s")
        return
    with container.Container(args.input) as box:
        box.verify(threads=args.threads)
        _say(args, f"{args.input}: OK ({len(box)} tensors, every checksum and decode verified) "
                   f"in {time.perf_counter() - t0:.2f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nzip", description="Lossless and learned codecs for ML data.")
    p.add_argument("-V", "--version", action="version", version=f"nzip {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, output=True):
        if output:
            sp.add_argument("-o", "--output", help="output path")
            sp.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
        sp.add_argument("-T", "--threads", type=int, default=0, help="threads (0 = all cores, default)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
        sp.add_argument("-v", "--verbose", action="store_true", help="print a traceback on error")

    sp = sub.add_parser("pack", help="compress a .safetensors file into .nz, a model folder into "
                                     "MODEL_DIR.nz/, or a model folder into the DFloat11 layout (lossless)")
    sp.add_argument("input")
    sp.add_argument("--format", choices=("nz", "dfloat11"), default="nz",
                    help="nz (default): nzip's containers; dfloat11: a Hugging Face folder in the DFloat11 "
                         "project's layout, loadable by the dfloat11 package")
    sp.add_argument("--codec", default="auto",
                    help=f"auto (per tensor, default) or one of: {', '.join(available())}; or a JSON config")
    sp.add_argument("--quality", help="Gaussian-splat scenes (.ply, .spz -> .nzs): low, compact, medium (default), "
                                      "high or lossless; images (.png, .jpg -> .nzi): 1 (fewest bits) .. 6, default 3")
    sp.add_argument("--model", help="images: the learned model, mbt2018-mean (default) or bmshj2018-hyperprior; "
                                    "--codec pc: mnist (default, shipped) or a .nzpc file")
    sp.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="scenes with SH degree >= 1: tune the SH codebooks against renders of the original "
                         "for STEPS gradient steps (default 0: off; ~0.5-5 s a step on a CPU, ms on a GPU)")
    sp.add_argument("--views", type=int, metavar="N",
                    help="scenes: N renders of the original (128x96) that move each Gaussian's tier by up to one "
                         "(compact: two up, and drops what they barely see; finer steps for what is seen, coarser for what is "
                         "hidden); default 12 (compact 24) up to 300,000 Gaussians, 0 (off) above")
    sp.add_argument("--any-order", action="store_true",
                    help="scenes, lossless: the same Gaussians may come back in another order (renders then differ "
                         "where Gaussians tie in depth); a scene on .spz's grids is then sorted, about 10%% smaller")
    sp.add_argument("--geometry", choices=("grids", "codebooks"),
                    help="scenes, lossy: scales and rotations on grids (default) or as residual codebooks of 64 "
                         "codewords as in Compact 3D Gaussian Splatting (about twice the bytes for the same renders)")
    sp.add_argument("--geometry-stages", type=int, metavar="N",
                    help="scenes, --geometry codebooks: how many residual stages (default 6, as in the paper)")
    sp.add_argument("--device", help="scenes: where --refine (and --views) render, cpu or cuda "
                                     "(default: cuda when present and --refine is on)")
    common(sp)
    sp.set_defaults(func=cmd_pack)

    sp = sub.add_parser("unpack", help="restore the original file (or folder) from .nz, byte for byte; "
                                       "a DFloat11 folder to plain bf16 safetensors; .nzf to .npy")
    sp.add_argument("input")
    sp.add_argument("--model", help=".nzf coded with --codec pc and a model of one's own: that .nzpc file")
    common(sp)
    sp.set_defaults(func=cmd_unpack)

    sp = sub.add_parser("train-pc", help="train a probabilistic circuit (HCLT) on n x H x W (or n x D) "
                                         "uint8/uint16 samples, for --codec pc")
    sp.add_argument("input", help="DATA.npy")
    sp.add_argument("--hidden", type=int, default=32, help="K, latent states per pixel (default 32)")
    sp.add_argument("--shared", type=int, default=64, help="M shared leaf distributions (0: none; default 64)")
    sp.add_argument("--epochs", type=int, default=30, help="epochs of mini-batch EM (default 30)")
    sp.add_argument("--full-batch", type=int, default=3, help="epochs of full-batch EM to finish (default 3)")
    sp.add_argument("--shift", type=int, default=1, help="images: augment by random shifts up to this (default 1)")
    sp.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    common(sp)
    sp.set_defaults(func=cmd_train_pc)

    sp = sub.add_parser("scene-eval", help="fidelity of a decoded Gaussian-splat scene: PSNR/SSIM of renders")
    sp.add_argument("original")
    sp.add_argument("decoded")
    sp.add_argument("--json", action="store_true", help='print {"psnr", "ssim", "views", "exact"}')
    sp.add_argument("--png", help="write side-by-side renders (original, decoded, error x4)")
    sp.add_argument("--views", type=int, default=24, help="orbit cameras (default 24)")
    sp.add_argument("--size", default="320x240", help="render size WxH (default 320x240)")
    sp.set_defaults(func=cmd_scene_eval, quiet=False, verbose=False)

    sp = sub.add_parser("info", help="list tensors, codecs, sizes and ratios")
    sp.add_argument("input")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_info, quiet=False, verbose=False)

    sp = sub.add_parser("verify", help="check every checksum and decode every tensor")
    sp.add_argument("input")
    common(sp, output=False)
    sp.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("nzip: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except (NzipError, OSError, json.JSONDecodeError) as exc:
        if getattr(args, "verbose", False):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"nzip: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
