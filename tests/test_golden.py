"""Golden files: bytes written by format version 1 must keep decoding to the same values."""

from pathlib import Path

import pytest

import nzip
from golden.make_golden import CODECS, golden_inputs
from helpers import same_bits
from nzip import codecs

HERE = Path(__file__).parent / "golden"


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_golden_frames(codec):
    frame = (HERE / f"v1_{codec}.nzf").read_bytes()
    assert same_bits(codecs.decode(frame), golden_inputs()["bf16"].contiguous())


def test_golden_numpy_frame():
    assert same_bits(codecs.decode((HERE / "v1_np_f16_ans.nzf").read_bytes()), golden_inputs()["np_f16"])


def test_golden_container():
    data = golden_inputs()
    with nzip.open(HERE / "v1_container.nz") as box:
        assert box.metadata() == {"golden": "v1"}
        assert sorted(box.keys()) == ["bf16", "f32", "i64"]
        for k in box.keys():
            assert same_bits(box.get_tensor(k), data[k].contiguous()), k
        box.verify()


def test_encoder_is_deterministic():
    """Not a format promise, but what makes golden files reproducible: same input, same bytes."""
    x = golden_inputs()["bf16"]
    for codec, params in CODECS.items():
        assert codecs.encode(x, codec, threads=1, **params) == codecs.encode(x, codec, threads=2, **params)
