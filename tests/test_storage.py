"""Storage pipelines: nzip.save/load, incremental saves, packed model folders, DCP on many
ranks, and checkpoints that survive a writer killed mid-save."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nzip
from nzip.cli import main as cli
from nzip.codecs import auto
from nzip.dtypes import dtype_from_name
from nzip.errors import ChecksumError, FormatError, NzipError, VersionError
from nzip.formats import container, model_folder

from helpers import child_process, read_line, same_bits

ROOT = Path(__file__).resolve().parents[1]


def training_state(seed: int = 0, rows: int = 256) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"embed.weight": (torch.randn(rows, 512, generator=g) * 0.02).bfloat16(),
                  "head.weight": torch.randn(64, 512, generator=g), "head.bias": torch.randn(64, generator=g)},
        "optimizer": {"state": {0: {"step": torch.tensor(12.0), "exp_avg": torch.randn(64, 512, generator=g)}},
                      "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "params": [0], "foreach": None,
                                        "name": "head"}]},
        "step": 1200, "loss": float("nan"), "ids": np.arange(10, dtype=np.int32),
    }


def assert_same_state(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    elif isinstance(a, (torch.Tensor, np.ndarray)):
        assert same_bits(a, b)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


# -- nzip.save / nzip.load ------------------------------------------------------------------

def test_nested_state_dict_roundtrip(tmp_path):
    state = training_state()
    nzip.save(state, tmp_path / "ckpt.nz", metadata={"run": "a", "epoch": 3})
    back = nzip.load(tmp_path / "ckpt.nz")
    assert_same_state(state, back)
    with nzip.open(tmp_path / "ckpt.nz") as box:
        assert box.metadata() == {"run": "a", "epoch": 3}
        assert "model.embed.weight" in box.keys() and "optimizer.state.0.exp_avg" in box.keys()
    only = nzip.load(tmp_path / "ckpt.nz", keys=["model.head.bias"])
    assert list(only) == ["model.head.bias"] and same_bits(only["model.head.bias"], state["model"]["head.bias"])


def test_flat_names_that_collide_after_flattening(tmp_path):
    state = {"a.b": torch.ones(3), "a": {"b": torch.zeros(3)}}
    nzip.save(state, tmp_path / "x.nz")
    assert_same_state(state, nzip.load(tmp_path / "x.nz"))


@pytest.mark.parametrize("bad, match", [
    ({"w": torch.ones(2), "f": lambda: 0}, "function"),
    ({"w": {(1, 2): torch.ones(2)}}, "only str and int keys"),
    ({"w": object()}, "object"),
])
def test_values_nzip_cannot_store_are_refused(tmp_path, bad, match):
    with pytest.raises(NzipError, match=match):
        nzip.save(bad, tmp_path / "x.nz")
    assert not (tmp_path / "x.nz").exists() and list(tmp_path.iterdir()) == []


def test_auto_records_its_choice_per_tensor(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"bf16": (torch.randn(2 << 20, generator=g) * 0.02).bfloat16(), "f32": torch.randn(4096, generator=g),
             "ints": torch.arange(4096), "tiny": torch.ones(4), "f16": torch.randn(4096, generator=g).half()}
    header = nzip.save(state, tmp_path / "x.nz")
    chosen = {e["name"]: e["codec"]["id"] for e in header["tensors"]}
    assert chosen == {"bf16": "ans", "f32": "planes", "ints": "zstd", "tiny": "raw", "f16": "ans"}
    with nzip.open(tmp_path / "x.nz") as box:  # recorded in the file
        assert {n: box.entry(n)["codec"]["id"] for n in box.keys()} == chosen


def test_auto_sample_picks_the_smallest_candidate(monkeypatch):
    # the sample decides: with a codec list where the first is clearly worse, auto moves off it
    raw = ((torch.randn(2 << 20) * 0.02).bfloat16().view(torch.uint8)).numpy()
    bf16 = dtype_from_name("bfloat16")
    monkeypatch.setattr(auto, "candidates", lambda dtype, nbytes: ["raw", "zstd", "ans"])
    assert auto.choose(bf16, raw=raw).codec_id == "ans"
    # small tensors are not sampled: the first candidate stands
    assert auto.choose(bf16, raw=raw[: 1 << 16]).codec_id == "raw"


def test_save_streams_through_a_window(tmp_path, monkeypatch):
    """Tensors are encoded a window at a time: the encoder never sees the whole model."""
    monkeypatch.setattr(container, "WINDOW_BYTES", 1 << 20)
    seen = []
    real = container.pmap_balanced

    def spy(fn, items, threads, cost):
        seen.append(sum(it.raw.size for it in items))
        return real(fn, items, threads, cost)

    monkeypatch.setattr(container, "pmap_balanced", spy)
    state = {f"w{i}": torch.randn(128, 1024) for i in range(8)}  # 8 x 512 KiB
    nzip.save(state, tmp_path / "x.nz")
    assert len(seen) >= 4 and max(seen) <= (1 << 20) + (512 << 10)
    assert_same_state(state, nzip.load(tmp_path / "x.nz"))


def test_big_header_moves_the_data_once(tmp_path):
    # many tensors with long names and no size hint: the header outgrows its room
    state = {("layer_" * 40) + str(i): torch.full((300,), float(i)) for i in range(300)}
    items = (container.Item(k, v.view(torch.uint8).numpy().reshape(-1), dtype_from_name("float32"), (300,), "zstd")
             for k, v in state.items())
    container.write(tmp_path / "x.nz", items)
    assert_same_state(state, nzip.load(tmp_path / "x.nz"))
    with nzip.open(tmp_path / "x.nz") as box:
        box.verify()


# -- incremental saves ----------------------------------------------------------------------

def test_incremental_save_stores_unchanged_tensors_as_references(tmp_path):
    first = training_state()
    nzip.save(first, tmp_path / "step1.nz")
    second = training_state()
    second["model"]["head.bias"] = second["model"]["head.bias"] + 1  # only the head moved
    second["step"] = 1300
    header = nzip.save(second, tmp_path / "step2.nz", base=tmp_path / "step1.nz")
    refs = {e["name"] for e in header["tensors"] if "ref" in e}
    assert "model.embed.weight" in refs and "model.head.bias" not in refs
    assert header["requires"] == ["refs"]
    assert (tmp_path / "step2.nz").stat().st_size < (tmp_path / "step1.nz").stat().st_size / 20
    assert_same_state(second, nzip.load(tmp_path / "step2.nz"))
    # a chain: step3 refers to step2, whose tensors refer to step1
    nzip.save(second, tmp_path / "step3.nz", base=tmp_path / "step2.nz")
    assert_same_state(second, nzip.load(tmp_path / "step3.nz"))
    assert cli(["verify", "-q", str(tmp_path / "step3.nz")]) == 0
    assert cli(["info", str(tmp_path / "step3.nz")]) == 0


def test_incremental_save_errors(tmp_path):
    state = training_state()
    nzip.save(state, tmp_path / "base.nz")
    with pytest.raises(NzipError, match="is the file being written"):
        nzip.save(state, tmp_path / "base.nz", base=tmp_path / "base.nz")
    nzip.save(state, tmp_path / "inc.nz", base=tmp_path / "base.nz")
    # the base is replaced by different bytes: the reference is refused, not followed
    changed = training_state(seed=1)
    nzip.save(changed, tmp_path / "base.nz")
    with pytest.raises((ChecksumError, KeyError)):
        nzip.load(tmp_path / "inc.nz")
    assert cli(["verify", "-q", str(tmp_path / "inc.nz")]) == 1
    # the base is gone
    (tmp_path / "base.nz").unlink()
    with pytest.raises(FormatError, match="missing"):
        nzip.load(tmp_path / "inc.nz")


def test_unknown_requirement_is_refused(tmp_path):
    nzip.save({"w": torch.ones(300)}, tmp_path / "x.nz")
    data = bytearray((tmp_path / "x.nz").read_bytes())
    header = json.loads(bytes(data[32 : 32 + int.from_bytes(data[16:24], "little")]))
    header["requires"] = ["time-travel"]
    body = json.dumps(header).encode()
    room = int.from_bytes(data[16:24], "little")
    body += b" " * (room - len(body))
    data[32 : 32 + room] = body
    from nzip.formats.checksum import xxh3

    data[24:32] = xxh3(bytes(body)).to_bytes(8, "little")
    (tmp_path / "x.nz").write_bytes(bytes(data))
    with pytest.raises(VersionError, match="time-travel"):
        nzip.load(tmp_path / "x.nz")


# -- packed model folders -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharded_minilm(tmp_path_factory, minilm_path):
    """MiniLM saved by transformers in 4 shards with an index, plus its tokenizer files."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("sharded") / "minilm"
    model = transformers.AutoModel.from_pretrained(str(minilm_path.parent))
    model.save_pretrained(str(folder), max_shard_size="25MB")
    for f in minilm_path.parent.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not (folder / f.name).exists():
            shutil.copy(f, folder / f.name)
    (folder / "1_Pooling").mkdir()
    shutil.copy(minilm_path.parent / "1_Pooling" / "config.json", folder / "1_Pooling" / "config.json")
    assert len(list(folder.glob("*.safetensors"))) >= 2 and (folder / "model.safetensors.index.json").exists()
    return folder


def tree_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_pack_and_unpack_a_sharded_folder(sharded_minilm, tmp_path):
    src = tmp_path / "minilm"
    shutil.copytree(sharded_minilm, src)
    assert cli(["pack", str(src), "-q", "-T", "2"]) == 0
    packed = tmp_path / "minilm.nz"
    assert (packed / model_folder.MANIFEST).exists()
    assert sorted(p.name for p in packed.glob("*.safetensors.nz")) == sorted(
        p.name + ".nz" for p in src.glob("*.safetensors"))
    assert (packed / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    stored = sum(p.stat().st_size for p in packed.glob("*.nz"))
    assert stored < 0.85 * sum(p.stat().st_size for p in src.glob("*.safetensors"))
    original = tree_bytes(src)
    shutil.rmtree(src)
    assert cli(["unpack", str(packed), "-q"]) == 0
    assert tree_bytes(src) == original  # every file, byte for byte
    assert cli(["verify", str(packed), "-q"]) == 0
    assert cli(["unpack", str(packed), "-q"]) == 1  # refuses to overwrite without -f


def test_load_and_build_a_model_from_a_packed_folder(sharded_minilm, tmp_path):
    transformers = pytest.importorskip("transformers")
    model_folder.pack_folder(sharded_minilm, tmp_path / "m.nz")
    state = nzip.load(tmp_path / "m.nz")
    reference = transformers.AutoModel.from_pretrained(str(sharded_minilm)).state_dict()
    assert set(state) <= set(reference) and len(state) >= len(reference) - 1
    assert all(same_bits(state[k], reference[k]) for k in state)
    some = nzip.load(tmp_path / "m.nz", keys=["embeddings.word_embeddings.weight"])
    assert list(some) == ["embeddings.word_embeddings.weight"]
    from nzip.torch import load_model

    model = load_model(tmp_path / "m.nz")  # one call, as transformers' own from_pretrained
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        ref_model = transformers.AutoModel.from_pretrained(str(sharded_minilm)).eval()
        assert torch.equal(model(ids).last_hidden_state, ref_model(ids).last_hidden_state)


def test_packed_folder_errors(sharded_minilm, tmp_path):
    packed = tmp_path / "m.nz"
    model_folder.pack_folder(sharded_minilm, packed)
    with pytest.raises(NzipError, match="already a packed folder"):
        model_folder.pack_folder(packed, tmp_path / "again.nz")
    with pytest.raises(NzipError, match="no .safetensors"):
        model_folder.pack_folder(tmp_path / "m.nz" / "1_Pooling", tmp_path / "p.nz")
    # a flipped bit in a shard: verify names the file and the tensor
    shard = sorted(packed.glob("*.safetensors.nz"))[0]
    with nzip.open(shard) as box:
        name = max(box.keys(), key=lambda n: box.entry(n)["size"])
        at = box.data_start + box.entry(name)["offset"] + box.entry(name)["size"] // 2
    data = bytearray(shard.read_bytes())
    data[at] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=name.replace(".", r"\.")):
        model_folder.verify_folder(packed)
    proc = subprocess.run([sys.executable, "-m", "nzip.cli", "verify", str(packed)], capture_output=True, text=True)
    assert proc.returncode == 1 and name in proc.stderr and shard.name in proc.stderr
    # a tampered plain file, and a folder whose manifest never got written
    (packed / "vocab.txt").write_text("changed")
    data[at] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="vocab.txt"):
        model_folder.verify_folder(packed)
    (packed / model_folder.MANIFEST).unlink()
    with pytest.raises(FormatError, match="never finished"):
        nzip.load(packed)


# -- torch.distributed.checkpoint on many ranks -------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, path: Path, mode: str) -> None:
    import torch.multiprocessing as mp

    import dcp_worker

    mp.spawn(dcp_worker.run, args=(world, free_port(), str(path), mode), nprocs=world, join=True)


@pytest.mark.parametrize("save_world, load_world", [(2, 4), (4, 2)])
def test_dcp_save_and_reshard_on_load(tmp_path, save_world, load_world):
    """Real gloo process groups: DTensor shards saved by one world size, loaded bit-exact by
    another with a different sharding."""
    spawn(save_world, tmp_path / "ckpt", "save")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files.count("nzip-dcp.json") == 1 and len([f for f in files if f.endswith(".nz")]) == save_world
    with nzip.open(next((tmp_path / "ckpt").glob("rank0-*.nz"))) as box:
        codecs = {box.entry(n)["dtype"]: box.entry(n)["codec"]["id"] for n in box.keys()}
    assert codecs["bfloat16"] in ("ans", "raw")  # the shards are coded as tensors, by dtype
    spawn(load_world, tmp_path / "ckpt", "load")


def test_dcp_save_again_into_the_same_folder_and_errors(tmp_path):
    import torch.distributed.checkpoint as dcp

    from nzip.dcp import NzipStorageReader, NzipStorageWriter

    path = tmp_path / "ckpt"
    state = {"w": torch.randn(40, 8).bfloat16(), "b": torch.randn(8), "note": "hello"}
    dcp.save(state, storage_writer=NzipStorageWriter(path), no_dist=True)
    first = {p.name for p in path.glob("*.nz")}
    state["w"] += 1
    dcp.save(state, storage_writer=NzipStorageWriter(path), no_dist=True)
    second = {p.name for p in path.glob("*.nz")}
    assert len(second) == 1 and not first & second  # the old save's files went after the manifest
    target = {"w": torch.zeros(40, 8).bfloat16(), "b": torch.zeros(8), "note": ""}
    dcp.load(target, storage_reader=NzipStorageReader(path), no_dist=True)
    assert same_bits(target["w"], state["w"]) and same_bits(target["b"], state["b"]) and target["note"] == "hello"
    (path / "nzip-dcp.json").unlink()
    with pytest.raises(BaseException, match="never finished"):  # DCP wraps it in CheckpointException
        dcp.load(target, storage_reader=NzipStorageReader(path), no_dist=True)


# -- a writer killed mid-save ---------------------------------------------------------------

WRITER = """
import sys, torch, nzip
path, seed = sys.argv[1], 0
while True:
    seed += 1
    g = torch.Generator().manual_seed(seed % 2)
    nzip.save({"w": torch.randn(4 << 20, generator=g).bfloat16(), "seed": seed % 2}, path)
    print("saved", flush=True)
"""


def state_for(seed: int) -> torch.Tensor:
    return torch.randn(4 << 20, generator=torch.Generator().manual_seed(seed)).bfloat16()


def test_killed_saves_leave_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.nz"
    nzip.save({"w": state_for(0), "seed": 0}, path)
    expected = {0: state_for(0), 1: state_for(1)}
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(4):
        with child_process([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE) as proc:
            assert read_line(proc) == b"saved\n"  # torch imported, saving in a loop
            time.sleep(rng.uniform(0.0, 0.3))
        # (killed on leaving the block)
        back = nzip.load(path)  # whatever instant the kill hit, a whole checkpoint is there
        assert same_bits(back["w"], expected[back["seed"]])
        with nzip.open(path) as box:
            box.verify()


def test_killed_folder_pack_leaves_the_previous_folder_intact(sharded_minilm, tmp_path):
    out = tmp_path / "m.nz"
    model_folder.pack_folder(sharded_minilm, out)
    before = tree_bytes(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(3)
    for _ in range(3):
        with child_process([sys.executable, "-m", "nzip.cli", "pack", str(sharded_minilm), "-o", str(out),
                            "-f", "-q", "--codec", "zstd"], env=env):
            time.sleep(rng.uniform(0.5, 1.5))
        now = tree_bytes(out)
        model_folder.verify_folder(out)
        if now != before:  # the kill came after the new folder took the name: it is wholly the new one
            for e in model_folder.read_manifest(out)["files"]:
                if e["stored"] != e["path"]:
                    with container.Container(out / e["stored"]) as box:
                        assert {box.entry(n)["codec"]["id"] for n in box.keys()} == {"zstd"}
        before = now


DCP_WRITER = """
import sys, warnings, torch, torch.distributed.checkpoint as dcp
from nzip.dcp import NzipStorageWriter
warnings.simplefilter("ignore")
path, seed = sys.argv[1], 0
while True:
    seed += 1
    g = torch.Generator().manual_seed(seed % 2)
    state = {"w": torch.randn(2 << 20, generator=g).bfloat16(), "b": torch.randn(1 << 20, generator=g)}
    dcp.save(state, storage_writer=NzipStorageWriter(path), no_dist=True)
    print("saved", flush=True)
"""


def test_killed_dcp_saves_leave_the_previous_checkpoint_intact(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    from nzip.dcp import NzipStorageReader

    def expected(seed):
        g = torch.Generator().manual_seed(seed)
        return {"w": torch.randn(2 << 20, generator=g).bfloat16(), "b": torch.randn(1 << 20, generator=g)}

    path = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(11)
    states = [expected(0), expected(1)]
    for _ in range(3):
        with child_process([sys.executable, "-c", DCP_WRITER, str(path)], env=env, stdout=subprocess.PIPE) as proc:
            assert read_line(proc) == b"saved\n"
            time.sleep(rng.uniform(0.0, 0.4))
        target = {"w": torch.zeros(2 << 20).bfloat16(), "b": torch.zeros(1 << 20)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(target, storage_reader=NzipStorageReader(path), no_dist=True)
        assert any(same_bits(target["w"], s["w"]) and same_bits(target["b"], s["b"]) for s in states)
