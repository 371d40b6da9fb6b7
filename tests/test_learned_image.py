"""The learned image codec (image-hyperprior) on real Kodak pixels, and CompressAI's import."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nzip import codecs
from nzip.errors import (BadParameterError, ChecksumError, CorruptDataError, FormatError, NzipError,
                         UnsupportedDtypeError)
from nzip.formats import frame

if importlib.util.find_spec("compressai") is None:  # its plain import needs torchvision: see the loader
    pytest.skip("the learned codecs need compressai (see the README)", allow_module_level=True)
PIL = pytest.importorskip("PIL.Image")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kodak() -> np.ndarray:
    """kodim23 (../shared/data/kodak; NZIP_KODAK names another folder, e.g. on the device)."""
    folder = Path(os.environ.get("NZIP_KODAK") or ROOT.parent / "shared" / "data" / "kodak")
    if not (folder / "kodim23.png").exists():
        pytest.skip(f"no Kodak images at {folder}")
    return np.asarray(PIL.open(folder / "kodim23.png").convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_compressai_imports_in_a_fresh_process():
    code = ("import sys; from nzip.features import compressai_loader; c = compressai_loader.load(); "
            "from compressai.models.vbr import MeanScaleHyperpriorVbr; "
            "from compressai.entropy_models import GaussianConditional; "
            "print(c.get_entropy_coder(), 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    coder, has_torchvision = out.stdout.split()
    assert coder == "ans"
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001  (the CUDA wheel raises RuntimeError next to a CPU torch)
        assert has_torchvision == "False"  # loaded without it, not through a half-import


@pytest.mark.parametrize("model", ["mbt2018-mean", "bmshj2018-hyperprior"])
def test_rate_and_quality_rise_with_quality(kodak, model):
    crop = kodak[128:320, 256:512]
    sizes, scores = [], []
    for q in codecs.get("image-hyperprior").qualities:
        blob = codecs.encode(crop, "image-hyperprior", quality=q, model=model)
        out = codecs.decode(blob)
        assert out.shape == crop.shape and out.dtype == np.uint8
        sizes.append(len(blob))
        scores.append(psnr(out, crop))
    assert sizes == sorted(sizes) and scores == sorted(scores), (sizes, scores)
    bpp = [8 * s / (crop.shape[0] * crop.shape[1]) for s in sizes]
    assert bpp[0] < 0.5 and scores[0] > 26, (bpp, scores)
    assert scores[-1] > 33, scores


@pytest.mark.parametrize("shape", [(1, 1), (3, 130), (65, 64), (70, 33)])
def test_any_size_round_trips(kodak, shape):
    h, w = shape
    crop = np.ascontiguousarray(kodak[200:200 + h, 300:300 + w])
    out = codecs.decode(codecs.encode(crop, "image-hyperprior", quality=6))
    assert out.shape == crop.shape
    if h * w > 100:
        assert psnr(out, crop) > 28


def test_deterministic_bytes_and_pixels(kodak):
    crop = kodak[:128, :192]
    a = codecs.encode(crop, "image-hyperprior", quality=2)
    assert a == codecs.encode(crop.copy(), "image-hyperprior", quality=2)
    assert np.array_equal(codecs.decode(a), codecs.decode(a))


def test_torch_input_gives_torch_output(kodak):
    torch = pytest.importorskip("torch")
    crop = torch.from_numpy(kodak[:64, :64].copy())
    out = codecs.decode(codecs.encode(crop, "image-hyperprior", quality=4))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == crop.shape


def test_qualities_and_models_are_listed():
    codec = codecs.get("image-hyperprior")
    assert codec.qualities == (1, 2, 3, 4, 5, 6)
    assert set(codec.models) == {"mbt2018-mean", "bmshj2018-hyperprior"}
    assert "image-hyperprior" in codecs.available()


def test_bad_parameters_and_inputs(kodak):
    crop = kodak[:64, :64]
    with pytest.raises(BadParameterError, match="quality"):
        codecs.encode(crop, "image-hyperprior", quality=0)
    with pytest.raises(BadParameterError, match="model"):
        codecs.encode(crop, "image-hyperprior", model="cheng2020")
    with pytest.raises(UnsupportedDtypeError):
        codecs.encode(crop.astype(np.float32), "image-hyperprior")
    with pytest.raises(BadParameterError, match="H x W x 3"):
        codecs.encode(crop[..., 0], "image-hyperprior")
    with pytest.raises(BadParameterError, match="H x W x 3"):
        codecs.encode(np.zeros((8, 8, 4), np.uint8), "image-hyperprior")
    with pytest.raises(BadParameterError, match="sides"):
        codecs.encode(np.zeros((0, 8, 3), np.uint8), "image-hyperprior")


def test_corrupt_and_foreign_payloads(kodak):
    blob = codecs.encode(kodak[:64, :128], "image-hyperprior", quality=3)
    with pytest.raises(NzipError):
        codecs.decode(blob[:-10])
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    with pytest.raises(ChecksumError):
        codecs.decode(bytes(flipped))
    header, payload = frame.unpack(blob)
    # the same payload claiming other weights: refused by name, never decoded to garbage
    other = bytearray(payload)
    other[4:12] = bytes(8)
    with pytest.raises(CorruptDataError, match="other mbt2018-mean weights"):
        codecs.decode(frame.pack(header, bytes(other)))
    # a header whose image size disagrees with the frame's shape
    bad = dict(header, shape=[64, 64, 3])
    with pytest.raises(CorruptDataError, match="does not match"):
        codecs.decode(frame.pack(bad, payload))
    # another payload's magic, and a newer layout version, inside a valid frame
    with pytest.raises(FormatError, match="not an nzip image payload"):
        codecs.decode(frame.pack(header, b"NZF\x01" + payload[4:]))
    with pytest.raises(FormatError, match="version 2 is newer"):
        codecs.decode(frame.pack(header, b"NZI\x02" + payload[4:]))
    # a truncated latent stream inside a valid frame
    with pytest.raises(NzipError):
        codecs.decode(frame.pack(header, payload[:40]))


def test_cli_pack_unpack_png(kodak, tmp_path):
    src = tmp_path / "photo.png"
    PIL.fromarray(kodak[:96, :160]).save(src)
    nzip = [sys.executable, "-m", "nzip"]
    subprocess.run(nzip + ["pack", str(src), "--quality", "5", "-q"], check=True, cwd=ROOT)
    packed = tmp_path / "photo.nzi"
    assert packed.exists() and src.exists()
    subprocess.run(nzip + ["unpack", str(packed), "-o", str(tmp_path / "back.png"), "-q"], check=True, cwd=ROOT)
    back = np.asarray(PIL.open(tmp_path / "back.png"))
    assert back.shape == (96, 160, 3) and psnr(back, kodak[:96, :160]) > 30
    again = subprocess.run(nzip + ["pack", str(src)], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 1 and "exists" in again.stderr
    bad = subprocess.run(nzip + ["pack", str(src), "-f", "--quality", "high"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "quality" in bad.stderr


def test_gpu_decode_equals_cpu_decode(kodak):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for q in (1, 6):
        blob = codecs.encode(torch.from_numpy(kodak[:192, :256].copy()), "image-hyperprior", quality=q)
        on_gpu = codecs.decode(blob, device="cuda")
        assert on_gpu.device.type == "cuda"
        assert torch.equal(on_gpu.cpu(), codecs.decode(blob))
