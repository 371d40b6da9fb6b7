"""GPU decoding of 16-bit `ans` payloads (nzip/kernels/ans.py, ans_decode.cu).

On the CPU: the device image of a payload, decoded by a step-by-step model of the kernel's
warps (32 symbols per step, words found by ballot and prefix popcount; one plane after the
other, which gives the same states as the kernel's interleaving of the two independent
streams), gives the CPU decoder's bits. With CUDA (the device machine): the kernel itself, on every case.
"""

import numpy as np
import pytest
import torch

import nzip
from nzip import codecs
from nzip.codecs.api import _parse_frame
from nzip.errors import CorruptDataError
from nzip.kernels import ans as gpu

from helpers import same_bits, special_values

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")
RANS_L = 1 << 15


def cases():
    g = torch.Generator().manual_seed(5)
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    return {
        "bf16-random": (torch.randn(50000, generator=g) * 0.02).bfloat16(),
        "bf16-special": special_values(torch.bfloat16, 20000),
        "fp16-special": special_values(torch.float16, 20000),
        "bf16-every-pattern": every.view(torch.bfloat16),
        "int16": torch.randint(-300, 300, (30001,), generator=g, dtype=torch.int16),
        "partial-chunk": (torch.randn(3 * 4096 + 17, generator=g) * 0.1).bfloat16(),
        "contexts": context_heavy(70001, seed=1),
        "one": torch.tensor([1.5], dtype=torch.bfloat16),
    }


PARAMS = [{"chunk": 4096}, {"chunk": 1 << 14, "lanes": 32}, {"chunk": 8192, "lanes": 8},
          {"chunk": 1 << 16, "lanes": 128}, {"chunk": 4096, "contexts": False}]


def payload(t: torch.Tensor, params: dict):
    header, body, dtype, _, count = _parse_frame(codecs.encode(t, "ans", **params))
    return codecs.get(header["codec"]), memoryview(body).cast("B"), dtype, count


def model_of_kernel(image: np.ndarray, planes, ctx_at: int, n: int, chunk: int, P: int, rotate: bool) -> np.ndarray:
    """ans_decode.cu written out with numpy: per chunk, per plane, steps of 32 symbols."""
    out = np.zeros(n, np.uint16)
    hi_bytes = np.zeros(n, np.uint32)
    tab_of = lambda p, k: image[p.table_at:].view(np.uint32)  # noqa: E731
    ctx = image[ctx_at : ctx_at + 256] if ctx_at >= 0 else None
    for c in range(-(-n // chunk)):
        a, m = c * chunk, min(chunk, n - c * chunk)
        for k, p in enumerate(planes):
            data = image[p.offsets[c] : p.offsets[c] + p.sizes[c]]
            if p.method == 0:
                syms = data.astype(np.uint32)
            else:
                L = p.lanes
                tab = tab_of(p, k)
                x = data[: 4 * L].view("<u4").astype(np.uint64).copy()
                assert ((x >= RANS_L) & (x < 1 << 31)).all()
                words = data[4 * L :].view("<u2").astype(np.uint64)
                wpos, syms = 0, np.zeros(m, np.uint32)
                group = min(L, 32)
                for i0 in range(0, m, group):
                    i = np.arange(i0, min(i0 + group, m))
                    j = i % L
                    v = x[j]
                    off = (ctx[hi_bytes[a + i]].astype(np.uint64) << P) if (k == 1 and p.method == 2) else 0
                    e = tab[(off + (v & ((1 << P) - 1))).astype(np.int64)].astype(np.uint64)
                    syms[i] = e & 0xFF
                    v = (((e >> 8) & 0xFFF) + 1) * (v >> P) + (e >> 20)
                    need = v < RANS_L
                    idx = wpos + np.cumsum(need) - need  # the prefix popcount
                    assert idx[need].size == 0 or idx[need].max() < words.size
                    v[need] = (v[need] << 16) | words[idx[need]]
                    wpos += int(need.sum())
                    x[j] = v
                assert (x == RANS_L).all() and wpos == words.size
            if k == 0:
                hi_bytes[a : a + m] = syms
            else:
                e16 = (hi_bytes[a : a + m] << 8) | syms
                if rotate:
                    e16 = ((e16 >> 1) | (e16 << 15)) & 0xFFFF
                out[a : a + m] = e16
    return out


@pytest.mark.parametrize("name", ["bf16-random", "fp16-special", "int16", "partial-chunk", "one"])
@pytest.mark.parametrize("params", PARAMS)
def test_device_image_decodes_like_the_cpu(name, params):
    t = cases()[name]
    codec, body, dtype, count = payload(t, params)
    image, planes, ctx_at = gpu.host_image(body, count, codec.chunk, codec.precision)
    got = model_of_kernel(image, planes, ctx_at, count, codec.chunk, codec.precision, dtype.is_float)
    assert np.array_equal(got, t.view(torch.int16).numpy().view(np.uint16))


def context_heavy(n: int = 1 << 16, seed: int = 0) -> torch.Tensor:
    """bf16 whose mantissa depends on the exponent (as in real weights, only more so): the
    encoder codes the low plane in context of the exponent."""
    g = torch.Generator().manual_seed(seed)
    exp = torch.randint(118, 128, (n,), generator=g)
    mant = torch.where(exp % 2 == 0, torch.randint(0, 16, (n,), generator=g), torch.randint(100, 128, (n,), generator=g))
    sign = torch.randint(0, 2, (n,), generator=g)
    return ((sign << 15) | (exp << 7) | mant).to(torch.int16).view(torch.bfloat16)


def test_context_coded_planes_decode_like_the_cpu():
    t = context_heavy()
    codec, body, dtype, count = payload(t, {"chunk": 1 << 14})
    image, planes, ctx_at = gpu.host_image(body, count, codec.chunk, codec.precision)
    assert planes[1].method == 2 and ctx_at >= 0 and planes[0].lanes == 32
    got = model_of_kernel(image, planes, ctx_at, count, codec.chunk, codec.precision, True)
    assert np.array_equal(got, t.view(torch.int16).numpy().view(np.uint16))


def test_device_image_refuses_corrupt_payloads():
    t = (torch.randn(10000) * 0.02).bfloat16()
    codec, body, _, count = payload(t, {"chunk": 4096})
    raw = bytes(body)
    with pytest.raises(CorruptDataError):
        gpu.host_image(memoryview(raw[:-3]), count, 4096, 12)
    bad = bytearray(raw)
    bad[0] = 7  # no such plane method
    with pytest.raises(CorruptDataError):
        gpu.host_image(memoryview(bytes(bad)), count, 4096, 12)


def test_lane_counts_the_kernel_cannot_take_stay_on_the_cpu():
    t = (torch.randn(10000) * 0.02).bfloat16()
    codec, body, _, count = payload(t, {"chunk": 4096, "lanes": 48})
    assert gpu.host_image(body, count, 4096, 12) is None


# -- on the GPU ------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("params", PARAMS + [{}])
def test_gpu_ans_decode_is_bit_exact(name, params):
    t = cases()[name]
    blob = codecs.encode(t, "ans", **params)
    got = codecs.decode(blob, device="cuda")
    assert got.is_cuda and got.dtype == t.dtype and got.shape == t.shape
    assert same_bits(got.cpu(), t)


@cuda
def test_gpu_ans_real_minilm_and_container(minilm_path, tmp_path):
    from safetensors.torch import load_file

    sd = {k: v.bfloat16() for k, v in load_file(str(minilm_path)).items() if v.is_floating_point()}
    nzip.save(sd, tmp_path / "m.nz", codec={"id": "ans", "chunk": 1 << 16})
    with nzip.open(tmp_path / "m.nz") as box:
        on_gpu = box.tensors(device="cuda")
        assert all(v.is_cuda and same_bits(v.cpu(), sd[k]) for k, v in on_gpu.items())
        name = "embeddings.word_embeddings.weight"
        assert same_bits(box.get_tensor(name, device="cuda").cpu(), sd[name])


@cuda
def test_gpu_ans_batch_and_corruption():
    ts = [(torch.randn(n) * 0.02).bfloat16() for n in (1, 4096, 70001, 300000)]
    residents = []
    for t in ts:
        codec, body, dtype, count = payload(t, {"chunk": 1 << 14})
        residents.append(gpu.upload(body, count, codec.chunk, codec.precision, dtype, "cuda"))
    outs = gpu.decode_batch(residents)
    assert all(same_bits(o.cpu(), t) for o, t in zip(outs, ts))
    # a flipped bit inside a stream: the kernel's end checks catch it
    codec, body, dtype, count = payload(ts[-1], {"chunk": 1 << 14})
    _, planes, _ = gpu.host_image(body, count, codec.chunk, codec.precision)
    bad = bytearray(body)
    bad[planes[0].offsets[1] + planes[0].sizes[1] // 2] ^= 0x40  # inside chunk 1's exponent stream
    resident = gpu.upload(memoryview(bytes(bad)), count, codec.chunk, codec.precision, dtype, "cuda")
    with pytest.raises(CorruptDataError):
        gpu.decode_batch([resident])
