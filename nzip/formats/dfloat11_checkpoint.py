"""Checkpoints of the DFloat11 project (PyPI `dfloat11`, 0.5): read and write their layout.

A DFloat11 model folder is a Hugging Face folder whose config.json has `dfloat11_config`
({version, threads_per_block, bytes_per_thread, pattern_dict}) and whose safetensors hold,
for every compressed module (a regex of `pattern_dict` names it; its list names the
sub-modules whose weights were concatenated, empty for a lone Linear/Embedding):

    luts              uint8 [R + 1, 256]: byte-indexed decode tables (an entry >= 240 points
                      to table 256 - entry for the next byte), then each exponent's code length
    encoded_exponent  uint8: the exponents' Huffman stream, MSB-first
    sign_mantissa     uint8 [n]: sign << 7 | mantissa
    output_positions  uint32 as uint8: first element of each window of
                      threads_per_block * bytes_per_thread stream bytes, then n
    gaps              uint8: 5 bits per thread (MSB-first): where its first code starts
    split_positions   int64: where each sub-module's weight starts in the concatenation

nzip decodes this on the CPU (compiled, a window per thread) and on the GPU (its own
kernel, no cupy), and writes it so that the `dfloat11` package loads nzip's output. The
layout has no shapes: they come from the model's config (through transformers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..codecs.entropy import _entropy, huffman, rans
from ..errors import BadParameterError, CorruptDataError, FormatError, NzipError, UnsupportedDtypeError

VERSION = "0.5.0"
THREADS_PER_BLOCK = 512
BYTES_PER_THREAD = 8
BUFFERS = ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps", "split_positions")
POINTER_MIN = 240  # table entries from here on are pointers, so exponents must stay below
MAX_CODE_BITS = 32  # four byte-levels of tables


# -- one module ------------------------------------------------------------------------
def encode_module(weights: list, threads_per_block: int = THREADS_PER_BLOCK,
                  bytes_per_thread: int = BYTES_PER_THREAD) -> dict:
    """Concatenate bf16 tensors and encode them into the six DFloat11 buffers (torch)."""
    import torch

    for w in weights:
        if w.dtype != torch.bfloat16:
            raise UnsupportedDtypeError(f"DFloat11 compresses bf16 weights, got {w.dtype}")
    flat = torch.cat([w.detach().reshape(-1).cpu() for w in weights]) if weights else torch.empty(0, dtype=torch.bfloat16)
    n = flat.numel()
    raw = flat.view(torch.uint8).numpy()
    exp, sm = np.empty(n, np.uint8), np.empty(n, np.uint8)
    _entropy.bf16_split(raw, exp, sm)
    counts = rans.histogram(exp)
    if counts[POINTER_MIN:].any():
        raise UnsupportedDtypeError("DFloat11's layout cannot hold exponents >= 240 (|x| >= 2^113, inf or NaN)")
    lengths, codes, luts = _code_and_tables(counts)
    stream = bytearray(n * int(lengths.max(initial=1)) // 8 + 32)
    offsets = np.zeros(1, np.uint64)
    nbits = _entropy.huff_encode(exp, codes, lengths, max(n, 1), stream, offsets) if n else 0
    n_bytes = -(-nbits // 8)
    window = threads_per_block * bytes_per_thread
    nwin = -(-n_bytes // window)
    # where every code starts; a thread's gap is the first start inside its 64-bit window
    starts = np.cumsum(lengths[exp], dtype=np.int64) - lengths[exp]
    thread_bits = np.arange(nwin * threads_per_block, dtype=np.int64) * (8 * bytes_per_thread)
    first = np.searchsorted(starts, thread_bits)
    gaps = np.where(first < n, starts[np.minimum(first, max(n - 1, 0))] - thread_bits, 0) if n else thread_bits * 0
    gaps = np.where((gaps >= 0) & (gaps < 32), gaps, 0).astype(np.uint8)
    gap_bits = ((gaps[:, None] >> np.arange(4, -1, -1, dtype=np.uint8)) & 1).astype(np.uint8).ravel()
    positions = np.append(np.searchsorted(starts, np.arange(nwin, dtype=np.int64) * (8 * window)), n).astype(np.uint32)
    split = np.cumsum([w.numel() for w in weights], dtype=np.int64)[:-1]
    return {
        "luts": torch.from_numpy(luts),
        "encoded_exponent": torch.frombuffer(bytearray(stream[:n_bytes]), dtype=torch.uint8) if n_bytes
        else torch.empty(0, dtype=torch.uint8),
        "sign_mantissa": torch.from_numpy(sm),
        "output_positions": torch.from_numpy(positions.view(np.uint8).copy()),
        "gaps": torch.from_numpy(np.packbits(gap_bits)),
        "split_positions": torch.from_numpy(split.copy()),
    }


def _code_and_tables(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A canonical Huffman code whose byte-level tables fit the layout: at most 16 pointer
    tables. Canonical codes put the long ones together, so they share few prefixes; a
    flat distribution over many exponents may still need more, and then a shorter limit
    (at worst 8 bits: a single table) is taken."""
    for limit in (MAX_CODE_BITS, 24, 16, 12, 8):  # 8: one table, no pointers
        lengths = huffman.code_lengths(counts, limit) if counts.any() else np.zeros(256, np.uint8)
        codes = huffman.canonical_codes(lengths)
        luts = _tables(lengths, codes)
        if luts is not None:
            return lengths, codes, luts
    raise BadParameterError("no DFloat11 table layout fits this exponent distribution")


def _tables(lengths: np.ndarray, codes: np.ndarray) -> np.ndarray | None:
    symbols = [int(s) for s in np.flatnonzero(lengths)]
    prefixes: dict[tuple[int, int], int] = {(0, 0): 0}  # (bits, value) -> table row
    for s in sorted(symbols, key=lambda s: int(lengths[s])):
        L, c = int(lengths[s]), int(codes[s])
        for level in range(1, (L - 1) // 8 + 1):
            prefixes.setdefault((8 * level, c >> (L - 8 * level)), len(prefixes))
    if len(prefixes) - 1 > 256 - POINTER_MIN:
        return None
    luts = np.zeros((len(prefixes) + 1, 256), np.uint8)
    for s in symbols:
        L, c = int(lengths[s]), int(codes[s])
        level = (L - 1) // 8
        row = prefixes[(8 * level, c >> (L - 8 * level))]
        rest = L - 8 * level  # 1..8 bits of this code in its last table
        lo = (c & ((1 << rest) - 1)) << (8 - rest)
        luts[row, lo: lo + (1 << (8 - rest))] = s
        for lv in range(level):  # pointers along the way
            parent = prefixes[(8 * lv, c >> (L - 8 * lv))]
            byte = (c >> (L - 8 * (lv + 1))) & 0xFF
            luts[parent, byte] = 256 - prefixes[(8 * (lv + 1), c >> (L - 8 * (lv + 1)))]
        luts[-1, s] = L
    return luts


def decode_module(buffers: dict, threads_per_block: int = THREADS_PER_BLOCK,
                  bytes_per_thread: int = BYTES_PER_THREAD, device=None, threads: int = 0):
    """The flat bf16 tensor of one module's buffers, decoded on the CPU or, for a CUDA
    device, on the GPU."""
    import torch

    from ..codecs.registry import resolve_threads

    b = {k: buffers[k] for k in BUFFERS if k in buffers}
    missing = [k for k in BUFFERS[:5] if k not in b]
    if missing:
        raise FormatError(f"DFloat11 module lacks {', '.join(missing)}")
    luts, codes, sm = (_u8(b[k]) for k in ("luts", "encoded_exponent", "sign_mantissa"))
    positions = np.frombuffer(_u8(b["output_positions"]).tobytes(), "<u4")
    gaps = _u8(b["gaps"])
    n = sm.size
    if luts.size % 256 or luts.size < 512 or positions.size < 1 or positions[-1] != n:
        raise CorruptDataError("DFloat11 module: tables or output positions do not match its size")
    if device is not None and torch.device(device).type == "cuda":
        from ..kernels import dfloat11_project

        return dfloat11_project.decode(luts, codes, sm, positions, gaps, threads_per_block, bytes_per_thread, device)
    out = np.empty(2 * n, np.uint8)
    if n:
        rc = _entropy.dfloat11_project_decode(luts, codes, sm, np.ascontiguousarray(positions, np.uint32), gaps,
                                              threads_per_block, bytes_per_thread, out, resolve_threads(threads))
        if rc:
            raise CorruptDataError("DFloat11 module: the exponent stream is corrupt")
    t = torch.from_numpy(out).view(torch.bfloat16)
    return t if device is None else t.to(device)


def _u8(t) -> np.ndarray:
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous().view(torch.uint8).numpy()
    return np.ascontiguousarray(t).view(np.uint8).ravel()


# -- folders ---------------------------------------------------------------------------
def config_of(folder) -> dict | None:
    """The folder's dfloat11_config, or None when it is no DFloat11 checkpoint."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    d = cfg.get("dfloat11_config") if isinstance(cfg, dict) else None
    return d if isinstance(d, dict) else None


def _weight_names(module: str, pattern_dict: dict, count: int) -> list[str]:
    for pattern, attrs in pattern_dict.items():
        if re.fullmatch(pattern, module):
            if attrs:
                if len(attrs) != count:
                    raise FormatError(f"DFloat11 module {module}: {count} weights, pattern lists {len(attrs)}")
                return [f"{module}.{a}.weight" for a in attrs]
            break
    if count != 1:
        raise FormatError(f"DFloat11 module {module}: {count} weights but no sub-module names")
    return [f"{module}.weight"]


def load_folder(folder, device=None, shapes: dict | None = None, threads: int = 0) -> dict:
    """The bf16 state dict of a DFloat11 model folder, bit-exact. Shapes come from
    `shapes` (name -> shape) or from the model's config through transformers (on the meta
    device, nothing allocated); without either the weights stay flat."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = config_of(folder)
    if cfg is None:
        raise FormatError(f"{folder}: not a DFloat11 checkpoint (config.json has no dfloat11_config)")
    tpb = int(cfg.get("threads_per_block", [THREADS_PER_BLOCK])[0])
    bpt = int(cfg.get("bytes_per_thread", BYTES_PER_THREAD))
    pattern_dict = cfg.get("pattern_dict") or {}
    raw: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        raw.update(load_file(str(f)))
    modules: dict[str, dict] = {}
    state: dict = {}
    for name, t in raw.items():
        module, _, leaf = name.rpartition(".")
        if leaf in BUFFERS and module:
            modules.setdefault(module, {})[leaf] = t
        else:
            state[name] = t if device is None else t.to(device)
    if shapes is None:
        shapes = model_shapes(folder)
    for module, bufs in modules.items():
        flat = decode_module(bufs, tpb, bpt, device=device, threads=threads)
        split = bufs.get("split_positions")
        parts = [flat] if split is None or split.numel() == 0 else list(flat.tensor_split(split.tolist()))
        for wname, part in zip(_weight_names(module, pattern_dict, len(parts)), parts):
            shape = (shapes or {}).get(wname)
            state[wname] = part.view(tuple(shape)) if shape is not None else part
    return state


def model_classes(config) -> list:
    """transformers classes for a config, best first: those its `architectures` names, then
    a causal LM, then the base model."""
    import transformers

    named = [getattr(transformers, a, None) for a in (getattr(config, "architectures", None) or [])]
    return [c for c in named if c is not None] + [transformers.AutoModelForCausalLM, transformers.AutoModel]


def meta_model(folder):
    """The model a folder's config.json describes, built on the meta device (nothing
    allocated): the class its `architectures` names, else a causal LM, else the base model;
    None without transformers or for an architecture it does not know."""
    try:
        import torch
        from transformers import AutoConfig
    except ImportError:
        return None
    try:
        config = AutoConfig.from_pretrained(str(folder))
        classes = model_classes(config)
        with torch.device("meta"):
            for cls in classes:
                try:
                    return cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
                except ValueError:
                    continue
    except Exception:  # noqa: BLE001 - an unknown architecture: no model
        return None
    return None


def model_shapes(folder) -> dict | None:
    """name -> shape of the model the folder's config describes (transformers, meta device)."""
    model = meta_model(folder)
    return None if model is None else {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- writing a folder, unpacking one ---------------------------------------------------------
def _module_pattern(module: str) -> str:
    """A pattern_dict key for a module: the name with layer numbers generalised."""
    return r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in module.split("."))


def _compressible_modules(folder: Path) -> set[str] | None:
    """Modules whose weight DFloat11's loader can take (nn.Linear / nn.Embedding, not tied to
    another parameter), from the model the config describes; None without transformers."""
    import torch

    model = meta_model(folder)
    if model is None:
        return None
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    tied = {n for names in owners.values() if len(names) > 1 for n in names}
    return {m for m, mod in model.named_modules()
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)) and f"{m}.weight" not in tied}


def write_folder(src, dst, overwrite: bool = False, progress=None) -> dict:
    """Write a Hugging Face folder of bf16 safetensors in the DFloat11 project's layout:
    every 2-D bf16 Linear/Embedding weight becomes one module's six buffers, the rest is
    kept as it is; other files (tokenizer, generation config) are copied; config.json gets
    `dfloat11_config`. The `dfloat11` package loads the result. Returns a summary."""
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .atomic import atomic_dir

    src, dst = Path(src), Path(dst)
    files = sorted(src.glob("*.safetensors"))
    if not (src / "config.json").is_file() or not files:
        raise FormatError(f"{src}: not a Hugging Face model folder (config.json and *.safetensors needed)")
    config = json.loads((src / "config.json").read_text())
    if isinstance(config, dict) and "dfloat11_config" in config:
        raise BadParameterError(f"{src} is a DFloat11 checkpoint already")
    allowed = _compressible_modules(src)
    patterns: dict[str, list] = {}
    summary = {"modules": 0, "bf16_bytes": 0, "compressed_bytes": 0, "kept_bytes": 0}
    weight_map = {}
    with atomic_dir(dst, overwrite) as tmp:
        for f in files:
            out = {}
            try:
                sf_context = safe_open(str(f), "pt")
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
                raise FormatError(f"{f}: not a readable safetensors file ({e})") from None
            with sf_context as sf:
                for name in sf.keys():
                    t = sf.get_tensor(name)
                    module = name[: -len(".weight")] if name.endswith(".weight") else None
                    if (module and t.dtype == torch.bfloat16 and t.dim() == 2 and t.numel()
                            and (allowed is None or module in allowed)):
                        try:
                            bufs = encode_module([t])
                        except UnsupportedDtypeError:  # inf/NaN or huge values: kept as they are
                            bufs = None
                        if bufs is not None:
                            for k, v in bufs.items():
                                out[f"{module}.{k}"] = v
                            patterns[_module_pattern(module)] = []
                            summary["modules"] += 1
                            summary["bf16_bytes"] += t.numel() * 2
                            summary["compressed_bytes"] += sum(v.numel() * v.element_size() for v in bufs.values())
                            if progress:
                                progress(t.numel() * 2)
                            continue
                    out[name] = t.contiguous()
                    summary["kept_bytes"] += t.numel() * t.element_size()
            save_file(out, str(tmp / f.name), metadata={"format": "pt"})
            weight_map.update({k: f.name for k in out})
        for other in src.iterdir():
            if other.is_file() and other.suffix != ".safetensors" and other.name not in (
                    "config.json", "model.safetensors.index.json"):
                shutil.copy2(other, tmp / other.name)
        if len(files) > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                        indent=2))
        config["dfloat11_config"] = {"version": VERSION, "threads_per_block": [THREADS_PER_BLOCK],
                                     "bytes_per_thread": BYTES_PER_THREAD, "pattern_dict": patterns}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return summary


def unpack_folder(src, dst, overwrite: bool = False, threads: int = 0) -> dict:
    """A DFloat11 folder back to a plain Hugging Face folder of bf16 safetensors (the
    weights bit-exact; shapes from the model's config, through transformers)."""
    import shutil

    from safetensors.torch import save_file

    from .atomic import atomic_dir

    src, dst = Path(src), Path(dst)
    if config_of(src) is None:
        raise FormatError(f"{src}: not a DFloat11 checkpoint (config.json has no dfloat11_config)")
    shapes = model_shapes(src)
    if shapes is None:
        raise NzipError("unpacking a DFloat11 folder needs the model's shapes: install transformers "
                        "(the layout stores weights flat)")
    state = load_folder(src, shapes=shapes, threads=threads)
    flat = [k for k, v in state.items() if v.dim() == 1 and len(shapes.get(k, ())) > 1]
    if flat:
        raise FormatError(f"{src}: no shape for {', '.join(flat[:3])}")
    with atomic_dir(dst, overwrite) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        for other in src.iterdir():
            if other.is_file() and other.suffix != ".safetensors" and other.name not in (
                    "config.json", "model.safetensors.index.json"):
                shutil.copy2(other, tmp / other.name)
        config = json.loads((src / "config.json").read_text())
        config.pop("dfloat11_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return {"tensors": len(state), "bytes": sum(v.numel() * v.element_size() for v in state.values())}
