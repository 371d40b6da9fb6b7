"""GPU decode of `ans` (16-bit) against decoding on the CPU and copying: where it pays.

Run on a machine with a CUDA GPU (the device machine):
    python tools/bench_gpu_ans.py [--sizes-mib 16,64,256,1024] [--json OUT]
    python tools/bench_gpu_ans.py --readme RESULTS_JSON     # only rewrite README's table

Data: torch.randn(n, seed 0) * 0.02 in bf16 (n = size / 2), encoded with `ans` at three
chunk sizes (the chunk is the unit of parallelism: one warp each): 1M elements (the CPU
default), 64K and 16K. For each: the size fraction; the GPU kernel's throughput in GB/s of
bf16 output (CUDA graphs of 10 launches, CUDA events, median), the compressed payload
already resident (nzip.kernels.ans.upload); and the path it replaces, decoding on the
host's CPU cores (codecs.decode, all cores) and copying the result to the GPU. `dfloat11`
block 256 on the same weights for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nzip import codecs  # noqa: E402
from nzip.codecs.api import _parse_frame  # noqa: E402
from nzip.kernels import ans as ans_gpu  # noqa: E402
from nzip.kernels import dfloat11 as df11_gpu  # noqa: E402

MiB = 1 << 20
CHUNKS = (1 << 20, 1 << 16, 1 << 14)


def bench_size(mib: float, reps: int) -> dict:
    from bench_gpu import timed

    n = int(mib * MiB) // 2
    w = (torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    row = {"mib": mib}
    for chunk in CHUNKS:
        blob = codecs.encode(w, "ans", chunk=chunk)
        header, payload, dtype, _, count = _parse_frame(blob)
        codec = codecs.get(header["codec"])
        resident = ans_gpu.upload(payload, count, codec.chunk, codec.precision, dtype, "cuda")
        out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
        plan = ans_gpu.Plan([resident], [out])
        plan.run()
        assert torch.equal(out.cpu().view(torch.int16), w.view(torch.int16)), "ans GPU decode is not bit-exact"
        t_gpu = timed(plan.launch, reps)
        t0 = time.perf_counter()
        for _ in range(3):
            codecs.decode(blob, threads=0).to("cuda")
        torch.cuda.synchronize()
        t_cpu = (time.perf_counter() - t0) / 3
        row[f"ans_c{chunk}"] = {"size_fraction": len(blob) / (2 * n), "gpu_gbps": 2 * n / t_gpu / 1e9,
                                "cpu_then_copy_gbps": 2 * n / t_cpu / 1e9, "chunks": resident.nchunks}
    blob = codecs.encode(w, "dfloat11", block=256)
    t, _ = df11_gpu.upload_frame(blob, "cuda")
    out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    plan = df11_gpu.Plan([t], [out])
    row["dfloat11_b256"] = {"size_fraction": len(blob) / (2 * n), "gpu_gbps": 2 * n / timed(plan.launch, reps) / 1e9}
    return row


def table(results: dict) -> str:
    lines = [f"GPU: {results['gpu']}; host CPU cores: {results['host_cores']}", "",
             "| bf16 size | chunk | size fraction | warps | GPU decode GB/s | CPU decode + copy GB/s | GPU / CPU path |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        for chunk in CHUNKS:
            a = r[f"ans_c{chunk}"]
            ratio = a["gpu_gbps"] / a["cpu_then_copy_gbps"]
            lines.append(f"| {r['mib']:g} MiB | {chunk // 1024}K | {a['size_fraction']:.4f} | {a['chunks']} | "
                         f"{a['gpu_gbps']:.3g} | {a['cpu_then_copy_gbps']:.1f} | {ratio:.2g}x |")
        d = r["dfloat11_b256"]
        lines.append(f"| {r['mib']:g} MiB | dfloat11 b256 | {d['size_fraction']:.4f} | | {d['gpu_gbps']:.0f} | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", default="16,64,256,1024")
    ap.add_argument("--json", default="bench/results/gpu_ans.json")
    ap.add_argument("--readme", metavar="RESULTS_JSON", help="only rewrite README.md's table (needs no GPU)")
    args = ap.parse_args()
    if args.readme:
        from readme_table import replace_table

        return replace_table("gpu-ans", table(json.loads(Path(args.readme).read_text())))
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_ans.py needs a CUDA GPU")
    results = {"gpu": torch.cuda.get_device_name(), "host_cores": os.cpu_count(), "torch": torch.__version__,
               "rows": []}
    for mib in [float(s) for s in args.sizes_mib.split(",")]:
        row = bench_size(mib, 20 if mib <= 256 else 5)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    print(table(results))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
