"""Every codec: bit-exact round trips over dtypes, shapes, layouts and special values."""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import FLOAT_DTYPES, INT_DTYPES, check_roundtrip, same_bits, special_values
from nzip import codecs
from nzip.dtypes import to_bytes
from nzip.errors import BadParameterError, ChecksumError, NzipError, UnknownCodecError, UnsupportedDtypeError
from nzip.formats import frame as frame_format

GENERIC = ["raw", "zstd", "planes", "ans"]


def test_available_lists_builtins():
    assert {"raw", "zstd", "planes", "ans", "dfloat11"} <= set(codecs.available())


@pytest.mark.parametrize("codec", GENERIC)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + INT_DTYPES, ids=str)
def test_special_values_all_dtypes(codec, dtype):
    for n in (0, 1, 7, 5000):
        check_roundtrip(special_values(dtype, n), codec)


@pytest.mark.parametrize("codec", GENERIC + ["dfloat11"])
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_weights_and_every_exponent(codec, threads):
    # every 16-bit pattern once: all exponents, NaN payloads, +-inf, -0.0, subnormals
    every = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    w = (torch.randn(300_000, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    for t in (every, w, torch.cat([w, every])):
        check_roundtrip(t, codec, threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("codec,params", [
    ("planes", {"chunk": 1024}), ("ans", {"chunk": 1024, "lanes": 5}), ("ans", {"chunk": 1024, "lanes": 64}),
    ("ans", {"chunk": 20_000}), ("dfloat11", {"block": 32, "code_length_limit": 9})])
def test_small_chunks_and_blocks_cross_boundaries(codec, params, threads):
    # threads=1 decodes 16-bit ans in place (the first plane in the output's upper half)
    g = torch.Generator().manual_seed(2)
    for t in ((torch.randn(100_001, generator=g) * 3).to(torch.bfloat16),
              (torch.randn(100_001, generator=g) * 0.02).to(torch.bfloat16), torch.randn(30_001, generator=g).half()):
        if codec != "dfloat11" or t.dtype == torch.bfloat16:
            check_roundtrip(t, codec, threads=threads, **params)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("limit", [13, 16])
def test_dfloat11_codes_longer_than_the_multi_symbol_table(limit, threads):
    # the CPU decoder looks up 12 bits at a time; longer codes go through the full table
    g = torch.Generator().manual_seed(4)
    every = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    t = torch.cat([(torch.randn(2_000_000, generator=g) * 0.02).to(torch.bfloat16), every])
    frame = codecs.encode(t, "dfloat11", code_length_limit=limit, block=2048)
    payload = np.frombuffer(frame_format.unpack(frame)[1], np.uint8)
    nsyms = int(np.unpackbits(payload[:32]).sum())
    assert payload[32 : 32 + nsyms].max() > 12  # some codes are longer than the table's 12 bits
    assert same_bits(codecs.decode(frame, threads=threads), t)


@pytest.mark.parametrize("threads", [1, 2])
def test_wide_types_join_in_ranges_on_threads(threads):
    # ans joins the planes of a large fp32/fp64 tensor in ranges, one per thread (the
    # vectorised fp32 join leaves a scalar tail when n is not a multiple of 16)
    g = torch.Generator().manual_seed(5)
    for t in (torch.randn(600_001, generator=g) * 0.02, torch.randn(600_003, generator=g, dtype=torch.float64)):
        check_roundtrip(t, "ans", threads=threads)
    from nzip.codecs.entropy import _entropy

    planes, out = np.zeros(4 * 100, np.uint8), np.zeros(4 * 100, np.uint8)
    with pytest.raises(ValueError, match="bad sizes"):
        _entropy.planes_join(planes, out, 4, True, 99)  # planes closer than n bytes apart
    with pytest.raises(ValueError, match="bad sizes"):
        _entropy.planes_join(planes[1:], out, 4, True, 100)  # the last plane would run past the end


@pytest.mark.parametrize("codec", GENERIC + ["dfloat11"])
def test_shapes_layouts_and_kinds(codec):
    base = torch.randn(6, 5, 4).to(torch.bfloat16)
    cases = [base, base[:, ::2, 1:], base.transpose(0, 2), base[0, 0, 0], torch.empty(0, 3, dtype=torch.bfloat16)]
    for t in cases:
        check_roundtrip(t, codec)
    if codec != "dfloat11":
        a = np.random.default_rng(0).normal(size=(7, 9)).astype(np.float32)
        for x in (a, a.T, a[::3], np.float64(3.5), np.asarray(-0.0, np.float32), a.astype(">f4")):
            frame = codecs.encode(x, codec)
            back = codecs.decode(frame)
            assert isinstance(back, np.ndarray)
            assert back.shape == np.shape(x) and back.tobytes() == np.ascontiguousarray(x, back.dtype).tobytes()


@settings(max_examples=60, deadline=None)
@given(arr=hnp.arrays(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint16, np.int32,
                                             np.int64, np.uint64, np.bool_, np.complex64]),
                      shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)),
       codec=st.sampled_from(GENERIC))
def test_hypothesis_numpy(arr, codec):
    frame = codecs.encode(arr, codec, threads=1)
    back = codecs.decode(frame)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == np.ascontiguousarray(arr).tobytes()


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=4000), codec=st.sampled_from(GENERIC + ["dfloat11"]),
       threads=st.sampled_from([1, 2]))
def test_hypothesis_bf16_bit_patterns(data, codec, threads):
    data = data[: len(data) // 2 * 2]
    t = torch.frombuffer(bytearray(data), dtype=torch.bfloat16) if data else torch.empty(0, dtype=torch.bfloat16)
    check_roundtrip(t, codec, threads=threads)


def test_complex_and_device_argument():
    c = torch.randn(100, dtype=torch.complex64)
    for codec in GENERIC:
        check_roundtrip(c, codec)
    out = codecs.decode(codecs.encode(torch.ones(3), "zstd"), device="cpu")
    assert out.device.type == "cpu"


def test_ans_shrinks_weights_and_mantissa_plane():
    w = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(3)) * 0.02).to(torch.bfloat16)
    sizes = {c: len(codecs.encode(w, c)) for c in ("raw", "zstd", "ans", "planes", "dfloat11")}
    assert sizes["ans"] < 0.665 * sizes["raw"]
    assert sizes["planes"] < 0.665 * sizes["raw"]
    assert sizes["dfloat11"] < 0.675 * sizes["raw"]
    assert sizes["ans"] < sizes["zstd"]


def test_zstd_levels_change_size():
    x = np.random.default_rng(0).zipf(1.5, 200_000).astype(np.int32)
    assert len(codecs.encode(x, "zstd", level=19)) < len(codecs.encode(x, "zstd", level=1))


def test_registry_get_and_config_equality():
    c = codecs.get("ans", lanes=4)
    assert c == codecs.get(c.get_config()) and c != codecs.get("ans")
    assert codecs.get({"id": "zstd", "level": 5}).level == 5


def test_errors_are_clear():
    with pytest.raises(UnknownCodecError, match="unknown codec 'nope'"):
        codecs.encode(torch.ones(3), "nope")
    with pytest.raises(UnsupportedDtypeError, match="'dfloat11' does not support dtype float32; it takes bfloat16"):
        codecs.encode(torch.ones(3, dtype=torch.float32), "dfloat11")
    with pytest.raises(BadParameterError, match="level"):
        codecs.encode(torch.ones(3), "zstd", level=99)
    with pytest.raises(BadParameterError, match="no parameter"):
        codecs.get("ans", colour="red")
    with pytest.raises(BadParameterError, match="threads"):
        codecs.encode(torch.ones(3), "zstd", threads=-1)
    with pytest.raises(UnsupportedDtypeError):
        codecs.encode(np.array(["a", "b"], dtype=object), "zstd")
    with pytest.raises(UnsupportedDtypeError):
        codecs.encode([1, 2, 3], "zstd")
    assert all(isinstance(e, ValueError) for e in (UnknownCodecError("x"), UnsupportedDtypeError("x")))


def test_same_bits_helper_can_fail():
    a = torch.tensor([0.0])
    assert not same_bits(a, torch.tensor([-0.0]))
    assert not same_bits(a, a.numpy())


@pytest.fixture(params=[True, False], ids=["simd", "scalar"])
def simd(request):
    """Run a test with the AVX-512 loops (where the CPU has them) and with the scalar ones."""
    from nzip.codecs.entropy import _entropy

    active = _entropy.set_simd(request.param)
    if request.param and not active:
        pytest.skip("this CPU has no AVX-512")
    yield active
    _entropy.set_simd(True)


@pytest.mark.parametrize("lanes", [1, 7, 8, 16, 32, 64])
def test_rans_lanes_simd_and_scalar_agree(simd, lanes):
    from nzip.codecs.entropy import _entropy, rans

    rng = np.random.default_rng(lanes)
    for n in (0, 1, lanes - 1, lanes, 16 * lanes + 3, 200_003):
        sym = np.minimum(rng.geometric(0.3, n), 255).astype(np.uint8)
        freqs = rans.quantize(rans.histogram(sym), 12)
        stream = rans.encode(sym, freqs, 12, lanes)
        assert np.array_equal(rans.decode(memoryview(stream), freqs, 12, lanes, n), sym)
        low = rng.integers(0, 256, n, dtype=np.uint8)
        out = np.empty(2 * n, np.uint8)
        rans.decode_into(memoryview(stream), freqs, 12, lanes, out, other=low, sym_high=True, rotate=True)
        v = (sym.astype(np.uint16) << 8) | low
        assert np.array_equal(out.view(np.uint16), (v >> 1) | ((v & 1) << 15))
        # context mode: symbol i coded with table ctxmap[low[i]], joined as the low byte
        ctxmap = (np.arange(256) % 3).astype(np.uint8)
        ctx_freqs = np.concatenate([rans.quantize(rans.histogram(sym[ctxmap[low] == c]), 12) for c in range(3)])
        cstream = rans.encode(sym, ctx_freqs, 12, lanes, low, ctxmap)
        rans.decode_into(memoryview(cstream), ctx_freqs, 12, lanes, out, low, ctxmap, other=low, sym_high=False)
        assert np.array_equal(out.view(np.uint16), (low.astype(np.uint16) << 8) | sym)
        # the other path must produce and accept the very same bytes
        _entropy.set_simd(not simd)
        assert rans.encode(sym, freqs, 12, lanes) == stream
        assert rans.encode(sym, ctx_freqs, 12, lanes, low, ctxmap) == cstream
        assert np.array_equal(rans.decode(memoryview(stream), freqs, 12, lanes, n), sym)
        _entropy.set_simd(simd)


def test_codecs_under_both_paths(simd):
    w = (torch.randn(300_001, generator=torch.Generator().manual_seed(9)) * 0.02).to(torch.bfloat16)
    for codec in ("ans", "planes"):
        for params in ({}, {"lanes": 64}, {"lanes": 16, "chunk": 4096}):
            check_roundtrip(w, codec, threads=2, **params)
            check_roundtrip(w.float(), codec, **params)


@pytest.mark.parametrize("lanes", [16, 48, 64, 128])
@pytest.mark.parametrize("contexts", [True, False], ids=["contexts", "one-table"])
def test_ans16_one_pass_decoder(simd, lanes, contexts):
    """16-bit `ans` decodes both planes of a chunk in one AVX-512 pass (the scalar path takes
    two): every lane count, with and without contexts, chunks that end in a partial group,
    in place (one thread) and into scratch (two), must give the same bits."""
    from nzip.codecs.entropy import _entropy

    g = torch.Generator().manual_seed(lanes)
    n = 3 * 20_000 + 7
    # four common exponents whose mantissas differ (what contexts capture), and rare ones
    e = torch.randint(0, 4, (n,), generator=g)
    k = torch.randint(0, 4, (n,), generator=g) + 4 * (e % 2)
    sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    w = (sign * torch.exp2(e - 3.0) * (1 + k / 8)).to(torch.bfloat16)
    w[::97] = torch.randn(w[::97].shape, generator=g).to(torch.bfloat16) * 100
    frame = codecs.encode(w, "ans", lanes=lanes, contexts=contexts, chunk=20_000)
    _, payload = frame_format.unpack(frame)
    plane0 = 9 + int.from_bytes(payload[1:9], "little")
    assert (payload[0], payload[plane0]) == (1, 2 if contexts else 1)  # both planes coded: the fused case
    f16 = codecs.encode(w.view(torch.float16), "ans", lanes=lanes, contexts=contexts, chunk=20_000)
    for threads in (1, 2):
        assert same_bits(codecs.decode(frame, threads=threads), w)
        assert same_bits(codecs.decode(f16, threads=threads), w.view(torch.float16))
    _entropy.set_simd(not simd)
    assert codecs.encode(w, "ans", lanes=lanes, contexts=contexts, chunk=20_000) == frame
    _entropy.set_simd(simd)


@pytest.mark.parametrize("codec", GENERIC + ["dfloat11"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.int8], ids=str)
def test_results_never_share_memory(codec, dtype):
    """Decoders use per-thread scratch buffers: a result must not change when the next
    decode reuses them."""
    if codec == "dfloat11" and dtype != torch.bfloat16:
        pytest.skip("dfloat11 is bf16 only")
    a, b = special_values(dtype, 70_000, seed=1), special_values(dtype, 70_000, seed=2)
    fa, fb = codecs.encode(a, codec), codecs.encode(b, codec)
    first = codecs.decode(fa)
    codecs.decode(fb)
    assert same_bits(first, a)


@pytest.mark.parametrize("codec", GENERIC + ["dfloat11"])
def test_decode_into_preallocated_buffers(codec):
    w = (torch.randn(3, 50_001, generator=torch.Generator().manual_seed(4)) * 0.02).to(torch.bfloat16)
    frame = codecs.encode(w, codec)
    arena = torch.empty(2 * w.numel() + 8, dtype=torch.bfloat16)
    out = arena[3 : 3 + w.numel()].view(w.shape)
    assert codecs.decode(frame, out=out) is out
    assert torch.equal(out.view(torch.int16), w.view(torch.int16))
    as_bytes = np.empty(w.numel() * 2, np.uint8)
    codecs.decode(frame, out=as_bytes)
    assert as_bytes.tobytes() == w.view(torch.uint8).numpy().tobytes()
    with pytest.raises(BadParameterError, match="bytes"):
        codecs.decode(frame, out=np.empty(10, np.uint8))
    with pytest.raises(BadParameterError, match="contiguous"):
        codecs.decode(frame, out=np.empty((w.numel(), 2), np.uint8)[:, :1])


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_many_matches_decode(threads):
    g = torch.Generator().manual_seed(5)
    objs = [(torch.randn(n, generator=g) * 0.02).to(torch.bfloat16) for n in (0, 1, 384, 70_000, 300_000)]
    objs += [torch.randn(33, 7, generator=g), torch.arange(1000), np.arange(50, dtype=np.int16),
             (torch.randn(5000, generator=g)).to(torch.bfloat16)[::3]]
    frames = [codecs.encode(o, c) for o in objs for c in ("ans", "zstd", "planes")]
    expected = [o for o in objs for _ in range(3)]
    for got, want in zip(codecs.decode_many(frames, threads=threads), expected):
        assert same_bits(got, want if isinstance(want, np.ndarray) else want.contiguous())
    outs = [np.empty(to_bytes(o)[0].size, np.uint8) for o in expected]
    assert codecs.decode_many(frames, out=outs, threads=threads) == outs
    assert all(a.tobytes() == to_bytes(o)[0].tobytes() for a, o in zip(outs, expected))


def test_decode_many_gives_each_tensor_memory_of_its_own():
    # keeping one decoded tensor must not keep the whole model's memory alive
    def root(a):
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a

    arrays = [np.arange(n, dtype=np.float32) for n in (10, 100_000, 3)]
    got = codecs.decode_many([codecs.encode(a, "ans") for a in arrays])
    assert len({id(root(g)) for g in got}) == len(arrays)
    assert all(g.ctypes.data % 64 == 0 for g in got)


@pytest.mark.parametrize("chunk", [1 << 20, 1 << 10])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_ans_batch_faulting_in_ahead_runs_the_side_task_once(threads, chunk):
    """The ans batch faults fresh output in ahead of its decoders and runs the side task
    (decode_many's checksums) on the faulting thread: the same bytes as without, the task
    exactly once; refused arguments leave it for SideTask.result() to run. Small chunks:
    hundreds of equal-sized jobs, which one thread must still take in order (in place)."""
    from nzip.codecs.entropy import _entropy
    from nzip.codecs.scratch import fresh_buffers
    from nzip.parallel import SideTask

    g = torch.Generator().manual_seed(7)
    tensors = [(torch.randn(n, generator=g) * 0.02).to(torch.bfloat16) for n in (3_000_000, 1, 70_000, 0, 1_200_000)]
    frames = [codecs.encode(t, "ans", chunk=chunk) for t in tensors]
    codec = codecs.get(frame_format.unpack(frames[0])[0]["codec"])
    payloads = [frame_format.unpack(f)[1] for f in frames]
    calls = []
    task = SideTask(lambda: calls.append(1) or "done")
    for fault, side in ((True, task.run), (False, None)):
        outs = fresh_buffers([2 * t.numel() for t in tensors])
        rcs = _entropy.ans_decode16_batch([(p, o, codec.chunk, codec.precision, True) for p, o in zip(payloads, outs)],
                                          threads, fault, side)
        assert rcs == [0] * len(tensors)
        assert all(o.tobytes() == to_bytes(t)[0].tobytes() for o, t in zip(outs, tensors))
    assert calls == [1] and task.result() == "done"
    late = SideTask(lambda: calls.append(2))
    with pytest.raises(ValueError):
        _entropy.ans_decode16_batch([(payloads[0], np.empty(3, np.uint8), codec.chunk, codec.precision, True)],
                                    threads, True, late.run)
    late.result()
    assert calls == [1, 2]


def test_side_task_runs_once_and_hands_on_its_error():
    from nzip.parallel import SideTask

    calls = []
    task = SideTask(lambda: calls.append(1) or 1 / 0)
    task.start()
    task.run()
    with pytest.raises(ZeroDivisionError):
        task.result()
    assert calls == [1]


def test_threads_default_to_the_cores_this_process_may_use():
    from nzip.parallel import cores, quota_cores

    assert quota_cores("max 100000\n") is None  # no limit
    assert quota_cores("200000 100000\n") == 2
    assert quota_cores("150000 100000") == 2  # 1.5 CPUs: two threads, each busy part of the time
    assert quota_cores("5000 100000") == 1
    assert quota_cores("") is None and quota_cores("x y") is None and quota_cores("0 100000") is None
    assert 1 <= cores() <= len(os.sched_getaffinity(0))
    from nzip.codecs.registry import resolve_threads

    assert resolve_threads(0) == resolve_threads(None) == cores()


def test_decode_many_rejects_corrupt_payloads():
    from tests_support import reseal

    frames = [codecs.encode((torch.randn(20_000) * 0.02).to(torch.bfloat16), "ans") for _ in range(3)]
    bad = reseal(frames[1], lambda p: p[:200] + bytes(40) + p[240:])  # inside the exponent stream
    with pytest.raises(NzipError):
        codecs.decode_many([frames[0], bad, frames[2]])


@pytest.mark.parametrize("where", ["payload", "header", "checksum"])
def test_decode_many_names_the_frame_whose_checksum_fails(where):
    """Checksums are checked while the payloads decode: a flipped bit anywhere is still a
    ChecksumError naming the frame, whatever the decoder made of the bytes."""
    frames = [codecs.encode((torch.randn(20_000) * 0.02).to(torch.bfloat16), "ans") for _ in range(3)]
    bad = bytearray(frames[2])
    at = {"payload": len(bad) // 2, "header": 40, "checksum": len(bad) - 3}[where]
    bad[at] ^= 0x08
    with pytest.raises(ChecksumError, match="frame 2"):
        codecs.decode_many([frames[0], frames[1], bytes(bad)])


def test_huffman_codes_are_canonical_and_length_limited():
    from nzip.codecs.entropy import huffman

    rng = np.random.default_rng(0)
    for _ in range(100):
        counts = np.zeros(256, np.int64)
        idx = rng.choice(256, int(rng.integers(1, 256)), replace=False)
        counts[idx] = rng.geometric(0.01, idx.size) ** rng.integers(1, 4)
        limit = int(rng.integers(8, 17))
        lengths = huffman.code_lengths(counts, limit)
        used = lengths[lengths > 0].astype(np.int64)
        assert (lengths > 0).sum() == (counts > 0).sum() and used.max() <= limit
        assert np.sum(2.0 ** -used) <= 1.0  # a prefix code
        codes = huffman.canonical_codes(lengths)
        # canonical: in (length, symbol) order, each code is the previous one plus one,
        # shifted left by the growth in length
        order = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
        code, prev = 0, int(lengths[order[0]])
        for s in order:
            code <<= int(lengths[s]) - prev
            assert codes[s] == code
            code, prev = code + 1, int(lengths[s])
