"""Models with compressed weights (nzip.torch) and DFloat11 model folders (pack/unpack).

Real models from transformers: a small Llama-style model built from a config with seeded
random weights, and the real all-MiniLM-L6-v2 weights cast to bf16. On the CPU here; the
same tests with device="cuda" run in tests/test_gpu.py on the device machine.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import nzip  # noqa: E402
import nzip.torch as nzt  # noqa: E402
from nzip.cli import main as cli  # noqa: E402
from nzip.errors import BadParameterError, FormatError, NzipError  # noqa: E402
from nzip.formats import dfloat11_checkpoint as df11  # noqa: E402

from helpers import same_bits, tiny_llama  # noqa: E402


def tokens(vocab: int, batch: int = 2, length: int = 12, seed: int = 1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def llama_folder(tmp_path) -> Path:
    model = tiny_llama()
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text('{"note": "kept as it is"}')
    return folder


@pytest.fixture
def minilm_bf16_folder(minilm_path, tmp_path) -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder with its weights in bf16."""
    from safetensors.torch import load_file, save_file

    src = Path(minilm_path).parent
    if not (src / "config.json").is_file():
        pytest.skip("the MiniLM weights came without their folder")
    folder = tmp_path / "minilm-bf16"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(minilm_path)).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


# -- compress_model ----------------------------------------------------------------------
def test_compressed_llama_gives_the_same_logits():
    model = tiny_llama()
    ids = tokens(model.config.vocab_size)
    with torch.no_grad():
        want = model(ids).logits
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    nzt.compress_model(model)
    state = model.nzip
    # every Linear and the embedding: per transformer block one group, plus embed and lm_head
    assert sum(len(g.layers) for g in state.groups) == 2 * 7 + 2
    assert len(state.groups) == 2 + 2
    assert state.compressed_bytes < 0.8 * state.original_bytes
    assert not any(isinstance(m.weight, torch.nn.Parameter) for m in model.modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)))
    with torch.no_grad():
        got = model(ids).logits
        again = model(ids).logits  # the scratch buffer is reused: still right the second time
    assert same_bits(got, want) and same_bits(again, want)
    # the last group decoded (lm_head) still holds its weight; earlier ones share its buffer
    assert same_bits(model.lm_head.weight, weights["lm_head.weight"])
    assert model.lm_head.weight.data_ptr() == model.nzip.scratch.data_ptr()


def test_compressed_model_per_layer_groups_and_generation():
    model = tiny_llama(seed=3)
    ids = tokens(model.config.vocab_size, batch=1, length=5)
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False)
    nzt.compress_model(model, per_block=False)
    assert len(model.nzip.groups) == 2 * 7 + 2
    with torch.no_grad():
        got = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)


def test_compress_model_refuses_training_and_grad():
    model = tiny_llama()
    model.train()
    with pytest.raises(BadParameterError, match="inference"):
        nzt.compress_model(model)
    model.eval()
    nzt.compress_model(model)
    with pytest.raises(BadParameterError, match="already"):
        nzt.compress_model(model)
    with pytest.raises(NzipError, match="no_grad"):
        model(tokens(model.config.vocab_size))


def test_compress_model_leaves_tied_and_small_weights():
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    ids = tokens(256)
    with torch.no_grad():
        want = model(ids).logits
    nzt.compress_model(model, min_elements=2048)
    names = {layer.name for g in model.nzip.groups for layer in g.layers}
    assert "model.embed_tokens" not in names and "lm_head" not in names  # tied: kept
    assert "model.layers.0.self_attn.q_proj" not in names  # 32 x 32 < 2048 elements
    assert "model.layers.0.mlp.up_proj" in names
    with torch.no_grad():
        assert same_bits(model(ids).logits, want)


def test_compressed_minilm_gives_the_same_embeddings(minilm_bf16_folder):
    model = transformers.BertModel.from_pretrained(str(minilm_bf16_folder), torch_dtype=torch.bfloat16).eval()
    ids = tokens(model.config.vocab_size, batch=3, length=16)
    with torch.no_grad():
        want = model(ids).last_hidden_state
    nzt.compress_model(model)
    # 6 layers; word and position embeddings (token types: 2 x 384, under min_elements); pooler
    assert len(model.nzip.groups) == 6 + 2 + 1
    with torch.no_grad():
        assert same_bits(model(ids).last_hidden_state, want)


# -- DFloat11 folders --------------------------------------------------------------------
def test_pack_and_unpack_a_llama_folder(llama_folder, tmp_path):
    packed, unpacked = tmp_path / "df11", tmp_path / "plain"
    assert cli(["pack", "--format", "dfloat11", str(llama_folder), "-o", str(packed), "-q"]) == 0
    cfg = json.loads((packed / "config.json").read_text())["dfloat11_config"]
    assert cfg["threads_per_block"] == [512] and cfg["bytes_per_thread"] == 8
    assert r"model\.layers\.\d+\.mlp\.down_proj" in cfg["pattern_dict"]
    assert (packed / "tokenizer_config.json").read_text() == '{"note": "kept as it is"}'
    assert sum(f.stat().st_size for f in packed.glob("*.safetensors")) < \
        0.8 * sum(f.stat().st_size for f in llama_folder.glob("*.safetensors"))
    # nzip.load reads it back bit-exact, shapes from the config
    from safetensors.torch import load_file

    original = load_file(str(llama_folder / "model.safetensors"))
    state = nzip.load(packed)
    assert set(state) == set(original)
    assert all(same_bits(state[k], original[k]) for k in original)
    # unpack: plain bf16 safetensors that transformers loads, identical logits
    assert cli(["unpack", str(packed), "-o", str(unpacked), "-q"]) == 0
    assert "dfloat11_config" not in json.loads((unpacked / "config.json").read_text())
    a = transformers.LlamaForCausalLM.from_pretrained(str(llama_folder), torch_dtype=torch.bfloat16).eval()
    b = transformers.LlamaForCausalLM.from_pretrained(str(unpacked), torch_dtype=torch.bfloat16).eval()
    ids = tokens(512)
    with torch.no_grad():
        assert same_bits(a(ids).logits, b(ids).logits)
    # and one call: a compressed model straight from the DFloat11 folder
    c = nzt.from_pretrained(packed)
    with torch.no_grad():
        assert same_bits(c(ids).logits, a(ids).logits)


def test_pack_a_minilm_folder(minilm_bf16_folder, tmp_path):
    packed = tmp_path / "df11"
    summary = df11.write_folder(minilm_bf16_folder, packed)
    assert summary["modules"] == 6 * 6 + 3 + 1
    assert summary["compressed_bytes"] < 0.7 * summary["bf16_bytes"]
    from safetensors.torch import load_file

    original = load_file(str(minilm_bf16_folder / "model.safetensors"))
    state = nzip.load(packed)
    assert all(same_bits(state[k], original[k]) for k in original)
    ids = tokens(30522, batch=2, length=10)
    ref = transformers.BertModel.from_pretrained(str(minilm_bf16_folder), torch_dtype=torch.bfloat16).eval()
    model = nzt.from_pretrained(packed)
    with torch.no_grad():
        assert same_bits(model(ids).last_hidden_state, ref(ids).last_hidden_state)


def test_folder_errors(llama_folder, tmp_path):
    with pytest.raises(FormatError, match="not a Hugging Face model folder"):
        df11.write_folder(tmp_path, tmp_path / "out")
    packed = tmp_path / "df11"
    df11.write_folder(llama_folder, packed)
    with pytest.raises(NzipError, match="already exists"):
        df11.write_folder(llama_folder, packed)
    with pytest.raises(BadParameterError, match="DFloat11 checkpoint already"):
        df11.write_folder(packed, tmp_path / "twice")
    assert cli(["pack", "--format", "dfloat11", str(llama_folder / "config.json"), "-q"]) == 1  # not a folder
    assert cli(["unpack", str(llama_folder), "-q"]) == 1  # neither packed nor a DFloat11 checkpoint
    # a failed write leaves no folder behind
    before = set(tmp_path.iterdir())
    (llama_folder / "model.safetensors").write_bytes(b"\0" * 64)
    assert cli(["pack", "--format", "dfloat11", str(llama_folder), "-o", str(tmp_path / "broken"), "-q"]) == 1
    assert set(tmp_path.iterdir()) == before
