"""GPU decoding of `dfloat11` and the DFloat11 project's layout.

The tests marked `cuda` run where torch sees a GPU (on the device machine) and skip
elsewhere; the others check on the CPU what the GPU is given: the device image of a payload
(decoded here by a line-by-line model of the kernel) and the DFloat11 project's layout
(golden bytes from its own encoder).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import nzip
from nzip import codecs
from nzip.errors import CorruptDataError, UnsupportedDtypeError
from nzip.formats import dfloat11_checkpoint as df11
from nzip.kernels import dfloat11 as gpu

from helpers import same_bits, tiny_llama

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")
GOLDEN = Path(__file__).parent / "golden" / "dfloat11_project_module.safetensors"


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return same_bits(a.detach().cpu().contiguous(), b.contiguous())


def special_bf16(n: int = 5000, seed: int = 0) -> torch.Tensor:
    """Every exponent value, NaN payloads, +-inf, -0.0 and subnormals, in random order."""
    g = torch.Generator().manual_seed(seed)
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    picks = every[torch.randint(0, 1 << 16, (n,), generator=g)]
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-40, -1e-40],
                            dtype=torch.bfloat16)
    return torch.cat([picks, specials])


def cases():
    g = torch.Generator().manual_seed(3)
    return {
        "random": (torch.randn(20000, generator=g) * 0.02).bfloat16(),
        "special": special_bf16(),
        "partial-block": torch.randn(2048 * 3 + 5, generator=g).bfloat16(),
        "one": torch.tensor([1.5], dtype=torch.bfloat16),
        "matrix": torch.randn(37, 129, generator=g).bfloat16(),
    }


def payload_of(frame):
    from nzip.codecs.api import _parse_frame

    header, payload, _, _, count = _parse_frame(frame)
    return header["codec"], memoryview(payload).cast("B"), count


def model_of_kernel(image: np.ndarray, w: dict, count: int, block: int) -> np.ndarray:
    """What dfloat11_decode.cu computes, written out plainly: the device image decodes, up to
    four codes per step through the multi-code table (fewer where the block ends), one
    through the code table where the first code is longer than the table's window."""
    maxlen, kbits = w["maxlen"], w["kbits"]
    lut = image[w["lut"]: w["lut"] + (2 << maxlen)].view("<u2")
    multi = image[w["multi"]: w["multi"] + (8 << kbits)].view("<u8")
    nblocks = -(-count // block)
    offsets = image[w["offsets"]: w["offsets"] + 8 * (nblocks + 1)].view("<u8")
    bits = "".join(map(str, np.unpackbits(image[w["stream"]: w["stream"] + w["stream_bytes"] + 8])))
    sm = image[w["sm"]: w["sm"] + count].astype(np.uint16)
    exps = np.empty(count, np.uint16)
    for b in range(nblocks):
        pos, i, end = int(offsets[b]), b * block, min(count, (b + 1) * block)
        while i < end:
            m = int(multi[int(bits[pos: pos + kbits], 2)])
            got = min((m >> 32) & 7, end - i)
            if got:
                exps[i: i + got] = [(m >> (8 * j)) & 0xFF for j in range(got)]
                i, pos = i + got, pos + ((m >> (32 + 4 * got)) & 15)
            else:
                e = int(lut[int(bits[pos: pos + maxlen], 2)])
                assert e, "a prefix no code has"
                exps[i], i, pos = e & 0xFF, i + 1, pos + (e >> 8)
        assert pos == offsets[b + 1]
    return ((sm & 0x80) << 8) | (exps << 7) | (sm & 0x7F)


def test_multi_code_table_takes_whole_codes_only():
    # codes: 0 -> exponent 1 (1 bit), 10 -> 2, 110 -> 3, 111 -> 4; maxlen 3; a 4-bit window
    lut = np.array([1 << 8 | 1] * 4 + [2 << 8 | 2] * 2 + [3 << 8 | 3, 3 << 8 | 4], np.uint16)
    table = gpu.multi_code_table(lut, 3, 3)

    def entry(*codes):  # (exponent, length) in stream order
        value, total = len(codes) << 32, 0
        for k, (e, length) in enumerate(codes, 1):
            total += length
            value |= e << (8 * (k - 1)) | total << (32 + 4 * k)
        return value

    assert table[0b000] == entry((1, 1), (1, 1), (1, 1))
    assert table[0b010] == entry((1, 1), (2, 2))
    assert table[0b101] == entry((2, 2))  # "1" after "10" is no whole code
    assert table[0b111] == entry((4, 3))
    four = gpu.multi_code_table(np.array([1 << 8 | 9] * 8 + [1 << 8 | 5] * 8, np.uint16), 4, 4)
    assert four[0b0000] == entry((9, 1), (9, 1), (9, 1), (9, 1))
    assert gpu.multi_code_table(np.array([0, 0, 1 << 8 | 7, 1 << 8 | 7], np.uint16), 2, 2)[0] == 0  # no code


@pytest.mark.parametrize("name", ["random", "special", "partial-block", "one"])
@pytest.mark.parametrize("params", [{}, {"block": 100, "code_length_limit": 16}])
def test_device_image_decodes_like_the_cpu(name, params):
    t = cases()[name]
    config, payload, count = payload_of(codecs.encode(t, "dfloat11", **params))
    image, w = gpu.host_image(payload, count, config["block"], config["code_length_limit"])
    assert w["stream"] % 16 == 0 and w["sm"] % 16 == 0 and w["lut"] % 16 == 0
    got = model_of_kernel(image, w, count, config["block"])
    assert np.array_equal(got, t.reshape(-1).view(torch.int16).numpy().view(np.uint16))


def test_device_image_refuses_corrupt_payloads():
    config, payload, count = payload_of(codecs.encode(cases()["random"], "dfloat11"))
    bad = bytearray(payload)
    bad[32] = 0  # a code length of 0 for a present exponent
    with pytest.raises(CorruptDataError):
        gpu.host_image(memoryview(bad), count, config["block"], config["code_length_limit"])
    with pytest.raises(CorruptDataError):
        gpu.host_image(payload[:-1], count, config["block"], config["code_length_limit"])


# -- the DFloat11 project's layout -----------------------------------------------------
def golden_module():
    from safetensors.torch import load_file

    raw = load_file(str(GOLDEN))
    bufs = {k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith("block.")}
    return bufs, [raw["reference.a"], raw["reference.b"]]


def test_reads_the_dfloat11_projects_own_bytes():
    bufs, refs = golden_module()
    flat = df11.decode_module(bufs)
    parts = flat.tensor_split(bufs["split_positions"].tolist())
    for part, ref in zip(parts, refs):
        assert bits_equal(part, ref.reshape(-1))


@pytest.mark.parametrize("n", [1, 7, 4096, 70001])
def test_dfloat11_layout_round_trip(n):
    g = torch.Generator().manual_seed(n)
    weights = [(torch.randn(n, generator=g) * 0.02).bfloat16(), torch.randn(5, 3, generator=g).bfloat16()]
    bufs = df11.encode_module(weights)
    assert bufs["luts"].shape[1] == 256 and bufs["luts"].shape[0] <= 18
    flat = df11.decode_module(bufs, threads=2)
    assert bits_equal(flat, torch.cat([w.reshape(-1) for w in weights]))


def test_dfloat11_layout_matches_the_golden_size():
    """nzip's writer is no worse than the project's own encoder on the same weights."""
    bufs, refs = golden_module()
    mine = df11.encode_module(refs)
    assert mine["encoded_exponent"].numel() <= bufs["encoded_exponent"].numel()
    assert mine["gaps"].numel() == bufs["gaps"].numel()
    assert mine["output_positions"].numel() == bufs["output_positions"].numel()


def test_load_a_dfloat11_folder(tmp_path):
    """A folder in the project's layout (config.json + safetensors), written the way its
    compress_model writes one, loads as the bf16 state dict."""
    import json

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(8, 16, generator=g).bfloat16(), torch.randn(4, 16, generator=g).bfloat16()
    head = torch.randn(10, 16, generator=g).bfloat16()
    norm = torch.ones(16)
    tensors = {f"layers.0.{name}": t for name, t in df11.encode_module([q, k]).items()}
    tensors.update({f"lm_head.{name}": t for name, t in df11.encode_module([head]).items()})
    tensors["norm.weight"] = norm
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = {"dfloat11_config": {"version": "0.5.0", "threads_per_block": [512], "bytes_per_thread": 8,
                                  "pattern_dict": {r"layers\.\d+": ["q_proj", "k_proj"], "lm_head": []}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    sd = df11.load_folder(tmp_path, shapes={"layers.0.q_proj.weight": (8, 16), "layers.0.k_proj.weight": (4, 16),
                                            "lm_head.weight": (10, 16)})
    assert bits_equal(sd["layers.0.q_proj.weight"], q) and bits_equal(sd["layers.0.k_proj.weight"], k)
    assert bits_equal(sd["lm_head.weight"], head) and bits_equal(sd["norm.weight"], norm)
    flat = nzip.load(tmp_path)  # no transformers config here: weights come back flat
    assert bits_equal(flat["lm_head.weight"], head.reshape(-1))


def test_upload_frame_takes_dfloat11_only():
    from nzip.errors import BadParameterError

    with pytest.raises(BadParameterError):
        gpu.upload_frame(codecs.encode(torch.ones(3), "zstd"), "cpu")


def test_dfloat11_layout_refuses_what_it_cannot_hold():
    with pytest.raises(UnsupportedDtypeError):
        df11.encode_module([torch.tensor([1.0, float("inf")], dtype=torch.bfloat16)])
    with pytest.raises(UnsupportedDtypeError):
        df11.encode_module([torch.ones(4)])


def test_dfloat11_layout_corrupt_positions():
    bufs, _ = golden_module()
    bad = dict(bufs)
    pos = bufs["output_positions"].view(torch.int32).clone()
    pos[1] += 5000
    bad["output_positions"] = pos.view(torch.uint8)
    with pytest.raises(CorruptDataError):
        df11.decode_module(bad)
    bad = dict(bufs)
    bad["luts"] = torch.zeros_like(bufs["luts"])  # every code length 0
    with pytest.raises(CorruptDataError):
        df11.decode_module(bad)


# -- on the GPU ------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("params", [{}, {"block": 512}, {"block": 100, "code_length_limit": 16}])
def test_gpu_decode_is_bit_exact(name, params):
    t = cases()[name]
    frame = codecs.encode(t, "dfloat11", **params)
    got = codecs.decode(frame, device="cuda")
    assert got.is_cuda and got.shape == t.shape and got.dtype == torch.bfloat16
    assert bits_equal(got.cpu(), t)
    assert bits_equal(codecs.decode(frame, device="cuda", verify=True).cpu(), t)


@cuda
def test_gpu_decode_every_bf16_pattern_and_empty():
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    assert bits_equal(codecs.decode(codecs.encode(every, "dfloat11"), device="cuda").cpu(), every)
    empty = torch.empty(0, 3, dtype=torch.bfloat16)
    got = codecs.decode(codecs.encode(empty, "dfloat11"), device="cuda")
    assert got.shape == (0, 3) and got.is_cuda


@cuda
def test_gpu_decode_real_minilm(minilm_path):
    from safetensors.torch import load_file

    sd = {k: v.bfloat16() for k, v in load_file(minilm_path).items() if v.is_floating_point()}
    frames = {k: codecs.encode(v, "dfloat11") for k, v in sd.items()}
    for k, f in frames.items():
        assert bits_equal(codecs.decode(f, device="cuda").cpu(), sd[k]), k


@cuda
def test_gpu_batch_into_one_preallocated_buffer():
    ts = [cases()[k] for k in ("random", "special", "partial-block", "one", "matrix")]
    residents = []
    for t in ts:
        config, payload, count = payload_of(codecs.encode(t, "dfloat11"))
        residents.append(gpu.upload(payload, count, config["block"], config["code_length_limit"], "cuda"))
    buf = torch.empty(sum(t.numel() for t in ts), dtype=torch.bfloat16, device="cuda")
    outs = list(buf.split([t.numel() for t in ts]))  # unaligned views: the general kernel
    plan = gpu.Plan(residents, outs)
    assert plan.kernel_name == "dfloat11_decode_any"
    aligned = gpu.decode_batch(residents)  # one new buffer, 16-byte aligned views: the staged kernel
    for t, o in zip(ts, aligned):
        assert bits_equal(o, t.reshape(-1))
    for _ in range(2):  # a plan decodes again and again
        buf.zero_()
        plan.run()
        for t, o in zip(ts, outs):
            assert bits_equal(o.cpu(), t.reshape(-1))


@cuda
def test_gpu_detects_a_corrupt_stream():
    t = cases()["random"]
    config, payload, count = payload_of(codecs.encode(t, "dfloat11"))
    bad = bytearray(payload)
    k = 32 + int(np.unpackbits(np.frombuffer(bytes(bad[:32]), np.uint8)).sum())
    bad[k] ^= 0x01  # first block's bit length off by one: its codes no longer end there
    resident = gpu.upload(memoryview(bad), count, config["block"], config["code_length_limit"], "cuda")
    with pytest.raises(CorruptDataError):
        gpu.decode(resident)


@cuda
def test_container_decodes_on_the_gpu(tmp_path):
    ts = cases()
    nzip.save(ts, tmp_path / "m.nz", codec="dfloat11")
    mixed = dict(ts, ids=torch.arange(10))
    nzip.save(mixed, tmp_path / "mixed.nz")  # ans and zstd: decoded on the CPU, then moved
    with nzip.open(tmp_path / "m.nz") as c:
        one = c.get_tensor("random", device="cuda")
        assert one.is_cuda and bits_equal(one, ts["random"])
        many = c.tensors(device="cuda")
    with nzip.open(tmp_path / "mixed.nz") as c:
        many_mixed = c.tensors(device="cuda")
    for got, want in ((many, ts), (many_mixed, mixed)):
        for k, t in want.items():
            assert got[k].is_cuda and bits_equal(got[k], t), k


@cuda
def test_gpu_reads_the_dfloat11_layout():
    bufs, refs = golden_module()
    flat = df11.decode_module(bufs, device="cuda")
    assert flat.is_cuda
    assert bits_equal(flat.cpu(), torch.cat([r.reshape(-1) for r in refs]))
    g = torch.Generator().manual_seed(9)
    weights = [special_bf16(300000)[:-7].nan_to_num(0.0, 0.0, 0.0).clamp(-1e30, 1e30),
               (torch.randn(1 << 20, generator=g) * 0.02).bfloat16()]
    mine = df11.encode_module(weights)
    assert bits_equal(df11.decode_module(mine, device="cuda").cpu(), torch.cat(weights))


# -- compressed models on the GPU, and the dfloat11 package itself -----------------------
def _tiny_llama_folder(tmp_path, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "llama"
    tiny_llama(seed, layers=3, vocab=1024, hidden=128, intermediate=352).save_pretrained(folder)
    return transformers, folder


@cuda
def test_compressed_llama_on_the_gpu(tmp_path):
    import nzip.torch as nzt

    transformers, folder = _tiny_llama_folder(tmp_path)
    ref = transformers.LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.bfloat16).eval().cuda()
    ids = torch.randint(0, 1024, (4, 20), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        want = ref(ids).logits
    model = nzt.from_pretrained(folder, device="cuda")
    assert model.nzip.device.type == "cuda" and model.nzip.groups[0].plan is not None
    with torch.no_grad():
        assert bits_equal(model(ids).logits, want)
        assert bits_equal(model(ids).logits, want)


def _blank_bf16(cls, config):
    """A model built as transformers builds one for torch_dtype=bf16: weights in bf16, the
    buffers it computes in fp32 (rotary frequencies) left in fp32."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return cls(config).eval()
    finally:
        torch.set_default_dtype(default)


def _df11():
    pytest.importorskip("cupy")
    return pytest.importorskip("dfloat11.dfloat11")


@cuda
def test_dfloat11_package_loads_what_nzip_writes(tmp_path):
    df11_pkg = _df11()
    transformers, folder = _tiny_llama_folder(tmp_path, seed=1)
    ref = transformers.LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.bfloat16).eval().cuda()
    df11.write_folder(folder, tmp_path / "df11")
    # the package builds its own model with an import newer transformers lack; given one, it
    # only loads into it
    blank = _blank_bf16(transformers.LlamaForCausalLM, ref.config)
    theirs = df11_pkg.DFloat11Model.from_pretrained(str(tmp_path / "df11"), device="cuda", bfloat16_model=blank)
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        assert bits_equal(theirs(ids).logits, ref(ids).logits)


@cuda
def test_nzip_reads_what_the_dfloat11_package_writes(tmp_path):
    import nzip.torch as nzt

    df11_pkg = _df11()
    transformers, folder = _tiny_llama_folder(tmp_path, seed=2)
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.bfloat16).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.cuda()(ids.cuda()).logits
    model.cpu()
    patterns = {r"lm_head": [], r"model\.embed_tokens": [], r"model\.layers\.\d+": [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}
    df11_pkg.compress_model(model, pattern_dict=patterns, save_path=str(tmp_path / "theirs"), save_single_file=False)
    state = nzip.load(tmp_path / "theirs")  # CPU decode
    assert all(bits_equal(state[k], weights[k]) for k in weights)
    on_gpu = nzip.load(tmp_path / "theirs", device="cuda")  # GPU decode, no cupy
    assert all(bits_equal(on_gpu[k], weights[k]) for k in weights)
    ours = nzt.from_pretrained(tmp_path / "theirs", device="cuda")
    with torch.no_grad():
        assert bits_equal(ours(ids.cuda()).logits, want)


@cuda
def test_dfloat11_package_and_nzip_agree_on_minilm(minilm_path, tmp_path):
    """MiniLM-bf16 both ways: nzip's folder loaded by the package, the package's read by nzip."""
    import nzip.torch as nzt
    from safetensors.torch import load_file, save_file

    df11_pkg = _df11()
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "minilm"
    src.mkdir()
    config = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, architectures=["BertModel"])
    config.save_pretrained(src)
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(minilm_path)).items()}
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    ref = transformers.BertModel.from_pretrained(str(src), torch_dtype=torch.bfloat16).eval().cuda()
    ids = torch.randint(0, 30522, (3, 24), generator=torch.Generator().manual_seed(3)).cuda()
    with torch.no_grad():
        want = ref(ids).last_hidden_state
    # nzip writes, the package loads (into a bf16 BertModel it is given)
    df11.write_folder(src, tmp_path / "ours")
    blank = _blank_bf16(transformers.BertModel, config)
    theirs = df11_pkg.DFloat11Model.from_pretrained(str(tmp_path / "ours"), device="cuda", bfloat16_model=blank)
    with torch.no_grad():
        assert bits_equal(theirs(ids).last_hidden_state, want)
    # the package writes, nzip loads
    model = transformers.BertModel.from_pretrained(str(src), torch_dtype=torch.bfloat16).eval()
    patterns = {r"embeddings\.word_embeddings": [], r"encoder\.layer\.\d+": [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense"]}
    df11_pkg.compress_model(model, pattern_dict=patterns, save_path=str(tmp_path / "pkg"), save_single_file=False)
    loaded = nzip.load(tmp_path / "pkg", device="cuda")
    ref_state = ref.state_dict()
    assert all(bits_equal(loaded[k], ref_state[k]) for k in loaded if k in ref_state)
    ours = nzt.from_pretrained(tmp_path / "pkg", device="cuda")
    with torch.no_grad():
        assert bits_equal(ours(ids).last_hidden_state, want)
