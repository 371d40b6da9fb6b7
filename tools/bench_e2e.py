"""End to end on a GPU: generation speed and peak memory of a Llama-style model, uncompressed
against nzip (weights kept compressed, decoded per block: nzip.torch) and the DFloat11
package (the same weights in its layout, written by nzip, loaded by dfloat11 0.5.0).

Run on the device machine:
    python tools/bench_e2e.py [--layers 22] [--json bench/results/e2e.json]

The model: TinyLlama-1.1B's shape (hidden 2048, 22 layers, MLP 5632, 32 heads, 4 KV heads,
vocabulary 32000), untied head, weights drawn by transformers' initialiser (normal, std
0.02) with seed 0 on the GPU, saved once as a bf16 folder. Each variant runs in its own
process so that peak memory is its own: model loaded to the GPU, a prompt of 32 tokens,
greedy generation of 64 new tokens at batch 1 and 64 (timed after one warm-up). Logits of
one forward pass are compared bit for bit across the variants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(folder: Path, layers: int) -> int:
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                      num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4,
                                      max_position_embeddings=2048, tie_word_embeddings=False,
                                      architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run_variant(variant: str, folder: Path, out: Path) -> None:
    import torch
    import transformers

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if variant == "bf16":
        model = transformers.LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.bfloat16).eval().cuda()
    elif variant == "nzip":
        import nzip.torch as nzt

        model = nzt.from_pretrained(folder, device="cuda")
    else:
        from dfloat11 import DFloat11Model

        # given a model, the package only loads into it (its own builder imports a function
        # newer transformers lack)
        config = transformers.AutoConfig.from_pretrained(str(folder))
        torch.set_default_dtype(torch.bfloat16)  # as transformers builds for torch_dtype=bf16
        blank = transformers.LlamaForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
        model = DFloat11Model.from_pretrained(str(folder) + "-dfloat11", device="cuda", bfloat16_model=blank)
    load_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    g = torch.Generator().manual_seed(0)
    result = {"variant": variant, "load_s": load_s, "resident_bytes": resident}
    with torch.no_grad():
        ids = torch.randint(0, 32000, (2, 32), generator=g).cuda()
        torch.save(model(ids).logits.float().cpu(), out.with_suffix(".logits.pt"))
        for batch in (1, 64):
            ids = torch.randint(0, 32000, (batch, 32), generator=g).cuda()
            kw = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
            model.generate(ids[:, :8], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            model.generate(ids, **kw)
            torch.cuda.synchronize()
            t = time.perf_counter() - t
            result[f"batch{batch}"] = {"tokens_per_s": batch * 64 / t, "seconds": t,
                                       "peak_bytes": torch.cuda.max_memory_allocated()}
    out.write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--json", default="bench/results/e2e.json")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        run_variant(args.variant, Path(args.folder), Path(args.out))
        return
    import torch

    from nzip.formats import dfloat11_checkpoint

    work = Path(tempfile.mkdtemp(prefix="nzip-e2e-"))
    folder = work / "llama"
    params = build(folder, args.layers)
    torch.cuda.empty_cache()
    t = time.perf_counter()
    dfloat11_checkpoint.write_folder(folder, str(folder) + "-dfloat11")
    write_s = time.perf_counter() - t
    results = {"gpu": torch.cuda.get_device_name(), "parameters": params, "layers": args.layers,
               "prompt": 32, "new_tokens": 64, "dfloat11_write_s": write_s, "variants": {}}
    logits = {}
    for variant in ("bf16", "nzip", "dfloat11"):
        out = work / f"{variant}.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--folder", str(folder),
                               "--out", str(out)], env=env, capture_output=True, text=True)
        if proc.returncode:
            print(f"{variant} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results["variants"][variant] = json.loads(out.read_text())
        logits[variant] = torch.load(out.with_suffix(".logits.pt"))
        print(json.dumps(results["variants"][variant]), flush=True)
    if "bf16" in logits:
        results["logits_identical"] = {v: bool(torch.equal(logits[v], logits["bf16"])) for v in logits}
    print(table(results))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


def table(r: dict) -> str:
    lines = [f"{r['gpu']}; Llama-style model, {r['parameters'] / 1e9:.2f} B parameters (bf16), prompt {r['prompt']}, "
             f"{r['new_tokens']} new tokens, greedy", "",
             "| variant | weights on GPU (GiB) | tokens/s b1 | peak GiB b1 | tokens/s b64 | peak GiB b64 | logits = bf16 |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, v in r["variants"].items():
        same = r.get("logits_identical", {}).get(name, "-")
        lines.append(f"| {name} | {v['resident_bytes'] / 2**30:.2f} | {v['batch1']['tokens_per_s']:.1f} | "
                     f"{v['batch1']['peak_bytes'] / 2**30:.2f} | {v['batch64']['tokens_per_s']:.0f} | "
                     f"{v['batch64']['peak_bytes'] / 2**30:.2f} | {same} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
