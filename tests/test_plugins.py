"""Third-party codecs register through the "nzip.codecs" entry-point group: install a real
distribution (tests/plugin) into a temporary prefix and use it from a fresh interpreter."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin"

SCRIPT = """
import torch
from nzip import codecs
assert "xor" in codecs.available(), codecs.available()
t = torch.randn(1000)
frame = codecs.encode(t, "xor", key=7)
assert torch.equal(codecs.decode(frame), t)
print("plugin ok", codecs.get("xor").get_config())
"""


def test_entry_point_plugin(tmp_path):
    target = tmp_path / "site"
    src = tmp_path / "plugin"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--no-build-isolation", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if r.returncode != 0:
        pytest.fail(f"could not install the test plugin: {r.stderr[-2000:]}")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plugin ok {'id': 'xor', 'key': 90}" in out.stdout
    # without the distribution on the path, the codec is unknown
    plain = subprocess.run([sys.executable, "-c", "from nzip import codecs; print('xor' in codecs.available())"],
                           capture_output=True, text=True, timeout=120)
    assert plain.stdout.strip() == "False"
