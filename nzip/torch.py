"""Models whose weights stay compressed in memory and decode just before use.

`compress_model(model)` replaces the bf16 weights of a model's Linear and Embedding layers
by `dfloat11` payloads (lossless, about 2/3 of the size). Before a transformer block runs, a
forward pre-hook decodes all of that block's weights at once (on a GPU: one kernel launch)
into one scratch buffer shared by the whole model, and points each layer's `weight` at its
slice; the next block overwrites the same buffer. So memory holds the compressed model plus
one block's weights, and outputs are bit-identical to the uncompressed model (the weights
are). For inference: a backward pass would read weights the next block has overwritten, so
compress_model refuses models in training mode and the hooks refuse to run with grad on.

`from_pretrained(folder)` loads a Hugging Face model (a plain folder, a packed folder or a
DFloat11 checkpoint) and compresses it in one call. `load_model(folder)` loads a packed
folder (`nzip pack MODEL_DIR`) as an ordinary model, weights decoded, in one call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from . import codecs
from .errors import BadParameterError, NzipError

GPU_BLOCK = 256  # the dfloat11 block for weights decoded on a GPU (more blocks, more threads)
_ALIGN = 8  # elements: slices of the scratch buffer start on 16-byte boundaries


def _align(n: int) -> int:
    return n + (-n % _ALIGN)


@dataclass
class _Layer:
    module: nn.Module
    name: str
    shape: tuple
    frame: bytes
    resident: object = None  # the payload on the GPU (nzip.kernels.dfloat11.DeviceTensor)


@dataclass
class _Group:
    """The layers one pre-hook decodes together (a transformer block, or one layer)."""

    layers: list
    plan: object = None  # GPU: the launch that decodes every layer into its slice
    views: list = field(default_factory=list)

    @property
    def elements(self) -> int:
        return sum(_align(int(torch.Size(layer.shape).numel())) for layer in self.layers)


class CompressedWeights:
    """What compress_model attached to a model (as `model.nzip`): the groups, the scratch
    buffer, and the sizes."""

    def __init__(self, device: torch.device, groups: list, original_bytes: int, compressed_bytes: int):
        self.device, self.groups = device, groups
        self.original_bytes, self.compressed_bytes = original_bytes, compressed_bytes
        self.scratch = torch.empty(max((g.elements for g in groups), default=0), dtype=torch.bfloat16, device=device)
        for g in groups:
            at = 0
            for layer in g.layers:
                n = int(torch.Size(layer.shape).numel())
                g.views.append(self.scratch[at: at + n])
                at += _align(n)
            if device.type == "cuda":
                from .kernels import dfloat11 as gpu

                g.plan = gpu.Plan([layer.resident for layer in g.layers], g.views)

    def decode(self, group: _Group) -> None:
        if torch.is_grad_enabled():
            raise NzipError("nzip.torch: compressed weights are for inference; run under torch.no_grad() or "
                            "torch.inference_mode()")
        if group.plan is not None:
            group.plan.run(check=False)  # payloads were checked when uploaded and test-decoded once
        else:
            codecs.decode_many([layer.frame for layer in group.layers], out=group.views)
        for layer, view in zip(group.layers, group.views):
            layer.module.weight = view.view(layer.shape)

    def check(self) -> None:
        """Decode every group with the GPU's corruption check (a sync per group)."""
        for g in self.groups:
            if g.plan is not None:
                g.plan.run(check=True)

    def __repr__(self) -> str:
        return (f"CompressedWeights({sum(len(g.layers) for g in self.groups)} layers in {len(self.groups)} groups, "
                f"{self.original_bytes} -> {self.compressed_bytes} bytes, scratch {self.scratch.numel() * 2} bytes, "
                f"{self.device})")


def _candidates(model: nn.Module, min_elements: int) -> list[tuple[str, nn.Module]]:
    """Linear/Embedding layers with a bf16 weight of their own (a tied weight stays as it is)."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) and isinstance(m.weight, nn.Parameter)
            and m.weight.dtype == torch.bfloat16 and m.weight.numel() >= min_elements and uses[id(m.weight)] == 1]


def _owners(model: nn.Module, names: list[str]) -> dict[str, str]:
    """layer name -> the block that runs it: the innermost item of an nn.ModuleList holding
    it (a transformer layer), else the layer itself."""
    blocks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList):
            blocks += [f"{name}.{i}" if name else str(i) for i in range(len(m))]
    owners = {}
    for n in names:
        inside = [b for b in blocks if n.startswith(b + ".")]
        owners[n] = max(inside, key=len) if inside else n
    return owners


def compress_model(model: nn.Module, device=None, block: int = GPU_BLOCK, min_elements: int = 1024,
                   per_block: bool = True, threads: int = 0) -> nn.Module:
    """Keep the bf16 Linear/Embedding weights of `model` compressed (codec `dfloat11`) and
    decode them just before use; returns the model (changed in place) with `model.nzip`.
    device: where weights are kept and decoded (default: where the model is; "cuda" moves the
    model there). per_block: one decode per transformer block (else one per layer)."""
    if model.training:
        raise BadParameterError("compress_model is for inference: call model.eval() first")
    if hasattr(model, "nzip"):
        raise BadParameterError("this model is compressed already")
    first = next(iter(model.parameters()), None)
    device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    layers, originals = [], {}
    original = compressed = 0
    for name, m in _candidates(model, min_elements):
        w = m.weight.detach()
        frame = codecs.encode(w.cpu(), "dfloat11", block=block, threads=threads)
        layer = _Layer(m, name, tuple(w.shape), frame)
        if device.type == "cuda":
            from .kernels import dfloat11 as gpu

            layer.resident, _ = gpu.upload_frame(frame, device)  # only compressed bytes travel
            compressed += layer.resident.nbytes
        else:
            compressed += len(frame)
        original += w.numel() * 2
        layers.append(layer)
        originals[name] = w
        del m.weight  # the Parameter leaves the model: moving it moves the rest only
    model.to(device)
    owners = _owners(model, [layer.name for layer in layers]) if per_block else {l.name: l.name for l in layers}
    by_owner: dict[str, list] = {}
    for layer in layers:
        by_owner.setdefault(owners[layer.name], []).append(layer)
    groups = [_Group(members) for members in by_owner.values()]
    state = CompressedWeights(device, groups, original, compressed)
    with torch.no_grad():
        for g in groups:  # one checked decode: the payloads decode to exactly the weights
            if g.plan is not None:
                g.plan.run(check=True)
            else:
                codecs.decode_many([layer.frame for layer in g.layers], out=g.views)
            for layer, view in zip(g.layers, g.views):
                ref = originals.pop(layer.name)
                if not torch.equal(view.view(torch.int16).cpu(), ref.reshape(-1).view(torch.int16).cpu()):
                    raise NzipError(f"nzip.torch: {layer.name} did not decode to its weight")
                layer.module.weight = view.view(layer.shape)
    for owner, g in zip(by_owner, groups):
        model.get_submodule(owner).register_forward_pre_hook(lambda _m, _a, g=g: state.decode(g))
    model.nzip = state
    return model


def _no_init():
    """transformers' switch that skips random initialisation (weights are loaded next)."""
    import contextlib

    for where in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            module = __import__(where, fromlist=["no_init_weights"])
            return module.no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def _build(folder, config, model_class, dtype: torch.dtype) -> nn.Module:
    """An empty model of the config's class with parameters in `dtype` (buffers the model
    computes in fp32, like rotary frequencies, stay fp32: as transformers builds it)."""
    from .formats import dfloat11_checkpoint

    if model_class is None:
        model = dfloat11_checkpoint.meta_model(folder)
        if model is None:
            raise NzipError(f"{folder}: transformers does not know this architecture")
        model_class = type(model)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with _no_init():
            return model_class.from_config(config) if model_class.__name__.startswith("Auto") else model_class(config)
    finally:
        torch.set_default_dtype(default)


def _fill(model: nn.Module, state: dict, folder) -> nn.Module:
    """Load every parameter from `state` (buffers only where the model has them)."""
    buffers = dict(model.named_buffers())  # older checkpoints carry some (position ids)
    own = model.state_dict()
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in buffers or k in own},
                                                strict=False)
    if unexpected or [k for k in missing if k in dict(model.named_parameters())]:
        raise NzipError(f"{folder}: the checkpoint does not fit {type(model).__name__} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def load_model(folder, model_class=None, dtype: torch.dtype | None = None, threads: int = 0) -> nn.Module:
    """A Hugging Face model from a packed folder (`nzip pack MODEL_DIR`), in one call: the
    config's class (or model_class), weights decoded by nzip, in their stored dtype unless
    `dtype` is given, eval mode. Like transformers' from_pretrained for a plain folder."""
    import transformers

    from . import checkpoint

    config = transformers.AutoConfig.from_pretrained(str(folder))
    state = checkpoint.load(folder, threads=threads)
    if dtype is None:  # the dtype most of the weights are stored in
        weights = _dtype_weights(state)
        dtype = weights.most_common(1)[0][0] if weights else torch.float32
    model = _build(folder, config, model_class, dtype)
    return _fill(model, {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, folder)


def _dtype_weights(state: dict) -> Counter:
    weights: Counter = Counter()
    for t in state.values():
        if t.is_floating_point():
            weights[t.dtype] += t.numel()
    return weights


def from_pretrained(folder, device=None, model_class=None, **compress) -> nn.Module:
    """A Hugging Face model from `folder` (plain bf16/fp32 safetensors, a packed folder or a
    DFloat11 checkpoint, read by nzip), in bf16, eval mode, with its weights compressed on
    `device`: one call. model_class: a transformers class (default: the config's architecture)."""
    import transformers

    from .formats import dfloat11_checkpoint, model_folder

    config = transformers.AutoConfig.from_pretrained(str(folder))
    if model_folder.is_packed(folder):
        model = load_model(folder, model_class, dtype=torch.bfloat16)
    elif dfloat11_checkpoint.config_of(folder) is not None:
        model = _build(folder, config, model_class, torch.bfloat16)
        state = dfloat11_checkpoint.load_folder(folder, shapes={k: tuple(v.shape) for k, v in model.state_dict().items()})
        model = _fill(model, state, folder)
    else:
        if model_class is None:
            model_class = dfloat11_checkpoint.model_classes(config)[0]
        model = model_class.from_pretrained(str(folder), torch_dtype=torch.bfloat16)
    model.eval()
    return compress_model(model, device=device, **compress)
