"""Write the golden files that pin format version 1 (run once per new format version).

    python tests/golden/make_golden.py

The data is regenerated from fixed seeds by `golden_inputs()`, so a test can check that
today's nzip still decodes yesterday's bytes to exactly these values.
"""

from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
CODECS = {"raw": {}, "zstd": {"level": 3}, "planes": {"chunk": 1024}, "ans": {"chunk": 4096, "lanes": 32},
          "dfloat11": {"block": 256}}


def golden_inputs() -> dict:
    g = torch.Generator().manual_seed(1234)
    w = (torch.randn(3000, generator=g) * 0.02).to(torch.bfloat16)
    every = torch.arange(0, 1 << 16, 7, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return {
        "bf16": torch.cat([w, every])[:12362].reshape(-1, 7)[:, :5],  # non-contiguous on purpose
        "f32": torch.randn(40, 30, generator=g),
        "i64": torch.arange(-500, 500).reshape(10, 100),
        "np_f16": np.random.default_rng(5).normal(size=(33,)).astype(np.float16),
    }


def main() -> None:
    from nzip import codecs, save

    data = golden_inputs()
    for codec, params in CODECS.items():
        x = data["bf16"]
        (HERE / f"v1_{codec}.nzf").write_bytes(codecs.encode(x, codec, threads=1, **params))
    (HERE / "v1_np_f16_ans.nzf").write_bytes(codecs.encode(data["np_f16"], "ans", threads=1))
    save({k: v for k, v in data.items() if k != "np_f16"}, HERE / "v1_container.nz",
         metadata={"golden": "v1"}, threads=1)


if __name__ == "__main__":
    main()
