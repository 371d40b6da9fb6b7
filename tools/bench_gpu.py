"""GPU decode throughput of `dfloat11`: nzip's kernel against the DFloat11 package's, one run.

Run on a machine with a CUDA GPU (the device machine):
    python tools/bench_gpu.py [--sizes-mib 1,2,...] [--df11-wheel-dir .whl] [--json OUT]

Data: torch.randn(n, seed 0) * 0.02 in bf16, n = size / 2, as in issue 3. For each size:
- nzip: the tensor encoded with codec dfloat11 (block 2048, the default, and block 256, the
  layout for weights kept on the GPU: more blocks, more threads),
  uploaded once (`nzip.kernels.dfloat11.upload`), decoded by a Plan (one launch);
- DFloat11: the same tensor written in the DFloat11 project's layout by nzip's writer
  (nzip.formats.dfloat11_checkpoint.encode_module) and decoded by the package's own PTX
  kernel (decode.ptx from the dfloat11 0.5.0 wheel, launched through cupy exactly as the
  package launches it); its output is checked bit for bit, which is also the proof that
  the package's kernel reads what nzip writes.
Throughput = bf16 bytes written / kernel time (CUDA graphs of 10 launches timed by CUDA
events, median of repetitions; the same for both kernels). The
copy bandwidth of the card (device-to-device copy, bytes read + written) is the ceiling.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nzip import codecs  # noqa: E402
from nzip.codecs.api import _parse_frame  # noqa: E402
from nzip.formats import dfloat11_checkpoint as df11_format  # noqa: E402
from nzip.kernels import dfloat11 as gpu  # noqa: E402

MiB = 1 << 20


def timed(fn, reps: int, inner: int = 10) -> float:
    """Median seconds of one fn() on the GPU: `inner` calls captured in a CUDA graph and
    replayed (CUDA events around each replay), so that the Python cost of a launch (tens of
    microseconds, for both kernels) does not count as decode time. Falls back to plain
    back-to-back launches where a capture is refused."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        run = graph.replay
    except Exception as e:  # noqa: BLE001 - any capture failure: time without a graph
        print(f"(no CUDA graph: {e}; timing plain launches)", file=sys.stderr)
        torch.cuda.synchronize()

        def run():
            for _ in range(inner):
                fn()
    run()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / inner)
    return float(np.median(times))


def copy_bandwidth() -> float:
    src = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), 5, inner=2)
    return 2 * src.numel() / t / 1e9


def df11_kernel(wheel_dir: str | None):
    """The DFloat11 package's decode kernel (its PTX, through cupy), or None."""
    try:
        import cupy as cp
    except ImportError:
        return None
    ptx = None
    for wheel in glob.glob(os.path.join(wheel_dir or ".", "dfloat11-*.whl")):
        with zipfile.ZipFile(wheel) as z:
            ptx = z.read("dfloat11/decode.ptx")
    if ptx is None:
        try:
            import dfloat11

            ptx = (Path(dfloat11.__file__).parent / "decode.ptx").read_bytes()
        except Exception:
            return None
    path = Path("/tmp/nzip_df11_decode.ptx")
    path.write_bytes(ptx)
    return cp.RawModule(path=str(path)).get_function("decode")


def bench_size(nbytes: int, kernel, reps: int, tuning: tuple = (gpu.THREADS, None, gpu.SHARED_LUT_BITS, gpu.MIN_CTAS),
               multi_bits: int = gpu.MULTI_BITS) -> dict:
    n = nbytes // 2
    g = torch.Generator(device="cuda").manual_seed(0)
    ref = (torch.randn(n, generator=g, device="cuda") * 0.02).bfloat16()
    host = ref.cpu()
    row = {"mib": nbytes / MiB, "elements": n}
    for block in (2048, 256):
        frame = codecs.encode(host, "dfloat11", block=block)
        header, payload, _, _, _ = _parse_frame(frame)
        config = header["codec"]
        resident = gpu.upload(payload, n, block, config["code_length_limit"], "cuda", multi_bits)
        out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
        plan = gpu.Plan([resident], [out], *tuning)
        plan.run(check=True)
        assert torch.equal(out.view(torch.int16), ref.view(torch.int16)), "nzip GPU decode is not bit-exact"
        t = timed(lambda: plan.run(check=False), reps)
        row[f"nzip_b{block}"] = {"size_fraction": len(payload) / nbytes, "gbps": nbytes / t / 1e9, "ms": t * 1e3}
        resident = plan = out = None  # (free the GPU memory before the next size)
    if kernel is not None and n <= (512 * MiB):
        import cupy as cp

        bufs = df11_format.encode_module([host])
        size = sum(v.numel() * v.element_size() for k, v in bufs.items() if k != "split_positions")
        dev = {k: v.to("cuda") for k, v in bufs.items()}
        out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
        positions = bufs["output_positions"].view(torch.int32).numpy().astype(np.int64)
        shared = 512 * 4 + 4 + int(np.diff(positions).max()) * 2
        n_bytes = dev["encoded_exponent"].numel()
        grid = (math.ceil(n_bytes / (512 * 8)),)
        args = [dev["luts"].data_ptr(), dev["encoded_exponent"].data_ptr(), dev["sign_mantissa"].data_ptr(),
                dev["output_positions"].data_ptr(), dev["gaps"].data_ptr(), out.data_ptr(),
                np.int32(dev["luts"].shape[0]), np.int32(n_bytes), np.int32(n)]

        def run():
            with cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                kernel(grid, (512,), args, shared_mem=shared)

        run()
        torch.cuda.synchronize()
        ok = torch.equal(out.view(torch.int16), ref.view(torch.int16))
        t = timed(run, reps)
        row["dfloat11"] = {"size_fraction": size / nbytes, "gbps": nbytes / t / 1e9, "ms": t * 1e3,
                           "bit_exact": bool(ok)}
    return row


def sweep(sizes_mib: list[float]) -> list[dict]:
    """Tuning constants of the staged kernel (CTA size, round length, minimum CTAs per SM,
    index bits of the multi-code table) on the same data: which one the library should use."""
    rows = []
    for mib in sizes_mib:
        n = int(mib * MiB) // 2
        g = torch.Generator(device="cuda").manual_seed(0)
        ref = (torch.randn(n, generator=g, device="cuda") * 0.02).bfloat16()
        host = ref.cpu()
        for block in (256, 512, 2048):
            header, payload, _, _, _ = _parse_frame(codecs.encode(host, "dfloat11", block=block))
            out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
            for multi_bits in (12, 11, 10):
                resident = gpu.upload(payload, n, block, header["codec"]["code_length_limit"], "cuda", multi_bits)
                for tuning in ((128, 32, 14, 1), (128, 16, 14, 1), (128, 32, 14, 8), (256, 32, 14, 1), (64, 32, 14, 1),
                               (128, 64, 14, 1)):
                    if multi_bits != 12 and tuning[:2] != (128, 32):
                        continue
                    plan = gpu.Plan([resident], [out], *tuning)
                    out.zero_()
                    plan.run(check=True)
                    assert torch.equal(out.view(torch.int16), ref.view(torch.int16))
                    t = timed(lambda: plan.run(check=False), 20)
                    k = gpu._module(*tuning).kernel(plan.kernel_name, "cuda")
                    row = {"mib": mib, "block": block, "multi_bits": multi_bits, "threads": tuning[0],
                           "round": tuning[1], "min_ctas": tuning[3], "gbps": round(n * 2 / t / 1e9, 1),
                           "regs": k.attribute(4), "local_bytes": k.attribute(3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del resident
    return rows


def table(results: dict) -> str:
    lines = [f"GPU: {results['gpu']}; device copy bandwidth {results['copy_gbps']:.0f} GB/s (read + write); "
             f"timing: {results.get('timing', 'CUDA events')}", "",
             "| bf16 size | nzip b2048 size | nzip b2048 GB/s | nzip b256 size | nzip b256 GB/s | DFloat11 size"
             " | DFloat11 GB/s | b2048 / DFloat11 | b256 / DFloat11 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        a, b, d = r["nzip_b2048"], r["nzip_b256"], r.get("dfloat11")
        ds = f"{d['size_fraction']:.4f} | {d['gbps']:.0f}" if d else "- | -"
        ra = f"{a['gbps'] / d['gbps']:.2f}x | {b['gbps'] / d['gbps']:.2f}x" if d else "- | -"
        lines.append(f"| {r['mib']:g} MiB | {a['size_fraction']:.4f} | {a['gbps']:.0f} | {b['size_fraction']:.4f} | "
                     f"{b['gbps']:.0f} | {ds} | {ra} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", default="1,2,4,8,16,32,64,128,256,512,1024,2048,4096")
    ap.add_argument("--df11-wheel-dir", default=None)
    ap.add_argument("--json", default="bench/results/gpu.json")
    ap.add_argument("--tuning", default=None, metavar="THREADS,ROUND,MIN_CTAS,MULTI_BITS",
                    help="kernel constants for the main table (default: the library's)")
    ap.add_argument("--sweep", action="store_true", help="compare the kernel's tuning constants instead")
    ap.add_argument("--readme", metavar="RESULTS_JSON",
                    help="only rewrite README.md's GPU table from a results file (needs no GPU)")
    args = ap.parse_args()
    if args.readme:
        from readme_table import replace_table

        return replace_table("gpu", table(json.loads(Path(args.readme).read_text())))
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU")
    if args.sweep:
        rows = sweep([float(s) for s in args.sizes_mib.split(",")])
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    kernel = df11_kernel(args.df11_wheel_dir)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
               "timing": "CUDA graph of 10 launches, CUDA events, median", "tuning": args.tuning, "copy_gbps": copy_bandwidth(), "rows": []}
    for mib in [float(s) for s in args.sizes_mib.split(",")]:
        reps = 50 if mib <= 64 else 20 if mib <= 512 else 5
        if args.tuning:
            t, r, m, k = (int(x) for x in args.tuning.split(","))
            row = bench_size(int(mib * MiB), kernel, reps, (t, r, gpu.SHARED_LUT_BITS, m), k)
        else:
            row = bench_size(int(mib * MiB), kernel, reps)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    print(table(results))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
