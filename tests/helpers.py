"""Shared test helpers: bit-exact round trips through any codec (model: numcodecs' checks)."""

from __future__ import annotations

import contextlib
import select
import subprocess

import numpy as np
import torch

from nzip import codecs
from nzip.dtypes import to_bytes

FLOAT_DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64,
                torch.float8_e4m3fn, torch.float8_e5m2]
INT_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool]


def same_bits(a, b) -> bool:
    """Same kind, dtype, shape and bytes (NaN payloads and -0.0 included)."""
    if type(a) is not type(b):
        return False
    ra, da, sa, _ = to_bytes(a)
    rb, db, sb, _ = to_bytes(b)
    return da == db and sa == sb and np.array_equal(ra, rb)


SCENE_FIELDS = ("positions", "sh_dc", "sh_rest", "opacity", "scales", "rotations")


def same_scene_bits(a, b) -> bool:
    """Two scenes with the same float bits in every attribute, Gaussian by Gaussian."""
    return all(np.array_equal(getattr(a, f).view(np.uint32), getattr(b, f).view(np.uint32)) for f in SCENE_FIELDS)


def scene_rows(scene) -> np.ndarray:
    """Every Gaussian's bits as a row, rows in one canonical order: equal for the same set."""
    bits = np.concatenate([getattr(scene, f).reshape(len(scene), -1) for f in SCENE_FIELDS], axis=1).view(np.uint32)
    return bits[np.lexsort(bits.T[::-1])]


def check_roundtrip(obj, codec: str, threads: int = 1, **params) -> bytes:
    """Encode, decode, assert bit-exact; returns the frame."""
    frame = codecs.encode(obj, codec, threads=threads, **params)
    back = codecs.decode(frame, threads=threads)
    assert same_bits(obj, back), f"{codec} round trip changed the data"
    return frame


def special_values(dtype: torch.dtype, n: int = 4096, seed: int = 0) -> torch.Tensor:
    """Random bit patterns of `dtype` (every NaN payload, inf, -0.0, subnormal can occur)
    mixed with weight-like values, so both the coded and the raw paths are exercised."""
    g = torch.Generator().manual_seed(seed)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    bits = torch.randint(0, 256, (n * itemsize,), generator=g, dtype=torch.uint8)
    t = bits.view(dtype) if dtype != torch.bool else (bits % 2).bool()
    if dtype.is_floating_point:
        w = (torch.randn(n, generator=g) * 0.02).to(dtype)
        t = torch.where(torch.rand(n, generator=g) < 0.7, w, t)
    return t


def tiny_llama(seed: int = 0, layers: int = 2, vocab: int = 512, hidden: int = 64, intermediate: int = 128,
               tied: bool = False):
    """A small Llama-style model with seeded random weights, in bf16, eval mode."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()


@contextlib.contextmanager
def child_process(args: list, timeout: float = 120, **popen):
    """A subprocess that is killed and reaped however the test ends, so that a test that
    fails (or a child that hangs) never leaves a process behind or waits forever."""
    proc = subprocess.Popen(args, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=timeout)


def read_line(proc: subprocess.Popen, timeout: float = 120) -> bytes:
    """The child's next line of stdout; fails instead of blocking when none comes in time."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the child printed nothing for {timeout} s (exit status {proc.poll()})"
    return proc.stdout.readline()
