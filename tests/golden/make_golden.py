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


def golden_state(step: int) -> dict:
    """A nested training state; step 2 changes only the bias (for the incremental file)."""
    g = torch.Generator().manual_seed(99)
    w = (torch.randn(64, 48, generator=g) * 0.02).to(torch.bfloat16)
    b = torch.randn(48, generator=g) + (step - 1)
    return {"model": {"w": w, "b": b}, "optim": {"state": {0: {"m": torch.randn(300, generator=g)}},
                                                 "groups": [{"lr": 0.001, "betas": (0.9, 0.99)}]}, "step": step}


def golden_scene(n: int = 600, grey: bool = False):
    """A small SH-degree-1 scene from fixed seeds; grey: colour channels that move together
    (as in real scenes, where format 5 stores them as differences)."""
    from nzip.scenes import Scene

    rng = np.random.default_rng(7)
    positions = rng.normal(size=(n, 3)).astype(np.float32)  # drawn in the order of the frozen files
    dc = rng.normal(0, 0.5, (n, 3))
    if grey:
        dc = dc[:, :1] + 0.1 * dc
    return Scene(positions=positions,
                 sh_dc=dc.astype(np.float32),
                 sh_rest=rng.normal(0, 0.05, (n, 3, 3)).astype(np.float32),
                 opacity=rng.normal(0, 2, n).astype(np.float32),
                 scales=rng.normal(-4, 0.5, (n, 3)).astype(np.float32),
                 rotations=rng.normal(size=(n, 4)).astype(np.float32))


def write_storage_and_scene_files() -> None:
    """Golden files of the features added in nzip 0.2 (still format version 1): a nested
    state dict and an incremental checkpoint referring to it."""
    from nzip import save

    save(golden_state(1), HERE / "v1_nested.nz", threads=1)
    save(golden_state(2), HERE / "v1_incremental.nz", base=HERE / "v1_nested.nz", threads=1)
    # the v1 scene files are frozen: scene format 1, written before importance tiers (format
    # 2), kept to prove that format 1 still decodes; write_scene_files writes the current one


def write_scene_files() -> None:
    """Scene format 8 (a lossy level's scales and rotations as residual codebooks): a medium
    .nzs with geometry codebooks and the values it decoded to. Frozen, kept to prove that
    their formats still decode: v1-v5 (formats 1-5; v5 is the latest grid layout, which
    format 8 writes unchanged), v6 and v7 (lossless scenes on .spz's grids, formats 6 and 7,
    written by encode_scene(golden_spz_scene(2 or 3), level="lossless"; the v3 one any_order)."""
    from nzip.scenes.codec import decode_scene, encode_scene

    scene = golden_scene(4000, grey=True)
    encode_scene(scene, HERE / "v8_scene_medium_codebooks.nzs", level="medium", overwrite=True, threads=1,
                 geometry="codebooks", geometry_stages=3)
    back = decode_scene(HERE / "v8_scene_medium_codebooks.nzs")
    np.savez_compressed(HERE / "v8_scene_medium_codebooks_decoded.npz", **{f: getattr(back, f) for f in
                        ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations")})


def golden_spz_scene(version: int):
    """golden_scene() put on .spz's grids (12 fractional bits; rotations in `version`'s layout)."""
    from nzip.scenes.spz import dequantize, quantize

    scene = golden_scene()
    return dequantize(quantize(scene, version, 12), len(scene), scene.sh_degree, 12, version)


def golden_image():
    """A 70 x 90 crop of Kodak's kodim23 (../shared/data/kodak)."""
    from PIL import Image

    kodak = Path(__file__).resolve().parents[3] / "shared" / "data" / "kodak" / "kodim23.png"
    return np.asarray(Image.open(kodak).convert("RGB"))[200:270, 300:390].copy()


def write_lossy_files() -> None:
    """Golden frames of the lossy codecs with what they decoded to when written: they pin
    the payload layouts, and (image, features) the shipped weights and the determinism of
    decoding. New weights make new payloads: these then fail by design (the payload names
    its weights), and the files must be rewritten."""
    from nzip import codecs

    image = codecs.encode(golden_image(), "image-hyperprior", quality=2)
    g = torch.Generator().manual_seed(3)
    features = torch.randn(70, 96, generator=g) * 0.4
    gear = codecs.encode(features, "gear", bits=3, rank=2, threads=1)
    feature = codecs.encode(features, "feature-hyperprior", quality=4)
    for name, blob in (("image", image), ("gear", gear), ("feature", feature)):
        (HERE / f"v1_{name}.nzf").write_bytes(blob)
    np.savez_compressed(HERE / "v1_lossy_decoded.npz", image=codecs.decode(image),
                        gear=codecs.decode(gear).numpy(), feature=codecs.decode(feature).numpy())


def write_pc_file() -> None:
    """A `pc` frame (shipped MNIST model) of three held-out MNIST digits, with the digits."""
    import gzip

    from nzip import codecs

    mnist = HERE.parents[2] / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
    digits = np.frombuffer(gzip.decompress(mnist.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)[5000:5003]
    np.save(HERE / "v1_pc_digits.npy", digits)
    (HERE / "v1_pc.nzf").write_bytes(codecs.encode(digits, "pc"))


def main() -> None:
    from nzip import codecs, save

    data = golden_inputs()
    for codec, params in CODECS.items():
        x = data["bf16"]
        (HERE / f"v1_{codec}.nzf").write_bytes(codecs.encode(x, codec, threads=1, **params))
    (HERE / "v1_np_f16_ans.nzf").write_bytes(codecs.encode(data["np_f16"], "ans", threads=1))
    save({k: v for k, v in data.items() if k != "np_f16"}, HERE / "v1_container.nz",
         metadata={"golden": "v1"}, threads=1)
    write_storage_and_scene_files()
    write_scene_files()
    write_lossy_files()
    write_pc_file()


if __name__ == "__main__":
    main()
