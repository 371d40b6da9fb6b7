"""The `nzip` command, run as a real subprocess."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time


NZIP = [sys.executable, "-m", "nzip.cli"]


def run(*args, check=True):
    r = subprocess.run([*NZIP, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


def test_console_script_is_installed():
    exe = shutil.which("nzip")
    assert exe, "the nzip console script is not on PATH"
    assert "nzip" in subprocess.run([exe, "--version"], capture_output=True, text=True).stdout


def test_pack_info_verify_unpack_minilm(tmp_path, minilm_path):
    src = tmp_path / "model.safetensors"
    shutil.copy(minilm_path, src)
    run("pack", src, "-T", "2", "-q")
    packed = tmp_path / "model.nz"
    assert packed.exists() and src.exists()  # keeps its input
    info = json.loads(run("info", packed, "--json").stdout)
    assert info["tensors"] == 104 and info["packed_bytes"] < info["raw_bytes"]
    assert "planes" in run("info", packed).stdout  # auto: fp32 weights go to planes
    assert "OK" in run("verify", packed).stderr
    out = tmp_path / "back.safetensors"
    run("unpack", packed, "-o", out)
    assert out.read_bytes() == src.read_bytes()
    src.unlink()
    run("unpack", packed)  # default name: model.safetensors
    assert src.read_bytes() == out.read_bytes()


def test_codec_choice_and_refusals(tmp_path, minilm_path):
    src = tmp_path / "m.safetensors"
    shutil.copy(minilm_path, src)
    run("pack", src, "--codec", "zstd", "-o", tmp_path / "z.nz")
    assert json.loads(run("info", tmp_path / "z.nz", "--json").stdout)["entries"][0]["codec"] == "zstd"
    before = (tmp_path / "z.nz").read_bytes()
    r = run("pack", src, "--codec", "planes", "-o", tmp_path / "z.nz", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "z.nz").read_bytes() == before
    run("pack", src, "--codec", '{"id": "zstd", "level": 1}', "-o", tmp_path / "z.nz", "-f")
    assert (tmp_path / "z.nz").read_bytes() != before
    r = run("pack", src, "--codec", "dfloat11", "-o", tmp_path / "d.nz", check=False)
    assert r.returncode == 1 and "bfloat16" in r.stderr  # MiniLM is fp32
    assert not (tmp_path / "d.nz").exists()
    r = run("pack", src, "--codec", "nope", "-o", tmp_path / "n.nz", check=False)
    assert r.returncode == 1 and "unknown codec" in r.stderr


def test_errors_are_one_line_and_leave_nothing(tmp_path):
    bad = tmp_path / "bad.nz"
    bad.write_bytes(b"not a container at all")
    for cmd in (["info", bad], ["verify", bad], ["unpack", bad, "-o", tmp_path / "o"],
                ["pack", tmp_path / "missing.safetensors"]):
        r = run(*cmd, check=False)
        assert r.returncode == 1, cmd
        assert r.stderr.startswith("nzip: error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nz"]


def test_verify_names_the_corrupt_tensor(tmp_path, minilm_path):
    packed = tmp_path / "m.nz"
    run("pack", minilm_path, "-o", packed)
    info = json.loads(run("info", packed, "--json").stdout)
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0x10
    packed.write_bytes(bytes(data))
    r = run("verify", packed, check=False)
    assert r.returncode == 1 and "corrupted" in r.stderr
    assert any(repr(e["name"]) in r.stderr for e in info["entries"])


def test_interrupt_leaves_no_partial_output(tmp_path, minilm_path):
    out = tmp_path / "m.nz"
    p = subprocess.Popen([*NZIP, "pack", str(minilm_path), "-o", str(out), "-T", "1"],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    if out.exists():  # it finished before the signal landed: the output must then be whole
        assert p.returncode in (0, 130, -signal.SIGINT)
        assert "OK" in run("verify", out).stderr
    else:  # 130 from nzip's handler, or -SIGINT if the signal came during start-up
        assert p.returncode in (130, -signal.SIGINT)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_pack_says_what_refinement_kept():
    from nzip.cli import _refined_note

    assert _refined_note(None, 0) == ""
    assert "k-means codebooks kept" in _refined_note(0, 200)
    assert "150 of 200 steps" in _refined_note(150, 200)
