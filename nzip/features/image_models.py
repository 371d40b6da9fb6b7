"""The learned image models: CompressAI's hyperprior architectures with variable rate, their
shipped weights, and deterministic compress/decompress.

Two architectures, each one set of weights for every quality (CompressAI's "vbr" models:
a per-quality gain scales the latent before rounding, so one network covers the whole
rate range and the package ships two weight files instead of one per quality):
  bmshj2018-hyperprior  Ballé et al. 2018, scale hyperprior
  mbt2018-mean          Minnen et al. 2018, mean-scale hyperprior (no context model)

Why decoding is deterministic on any machine: the entropy coder's tables (quantized CDFs)
are computed once at export and stored with the weights, never recomputed on load; the
hyper-synthesis that picks a table per latent element runs on the CPU in float64, where
different machines' rounding cannot move a value across a table boundary in practice; and
the synthesis transform also runs in float64, so CPU and GPU decodes give the same pixels.
"""

from __future__ import annotations

import copy
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadParameterError, CorruptDataError, FormatError, NzipError
from ..formats.checksum import xxh3
from . import compressai_loader

WEIGHTS_DIR = Path(__file__).parent / "weights"
N, M = 128, 192
# Training lambdas (distortion weight, per CompressAI's 255^2-scaled MSE) of qualities 1..6
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.025, 0.0483)
# Initial per-quality gains (1 / quantization step of the latent), CompressAI's vbr values
# for its qualities 1..6, normalised so that the top quality has gain 1
GAINS = tuple(g / 0.51801 for g in (0.1, 0.13944, 0.19293, 0.26874, 0.37268, 0.51801))
ARCHS = {"bmshj2018-hyperprior": "ScaleHyperpriorVbr", "mbt2018-mean": "MeanScaleHyperpriorVbr"}
DEFAULT_ARCH = "mbt2018-mean"
PAD = 64  # the analysis transform downsamples by 64 (16 for y, 4 more for z)


def build(arch: str, channels: int = 3):
    """A fresh (untrained) model of an architecture, configured with nzip's qualities;
    channels=1 makes the one-channel model of the feature codec (FCM-LM's setting)."""
    import torch

    if arch not in ARCHS:
        raise BadParameterError(f"unknown image model {arch!r}; nzip has {sorted(ARCHS)}")
    compressai_loader.load()
    from compressai.models import vbr

    model = getattr(vbr, ARCHS[arch])(N=N, M=M)
    if channels != 3:
        from compressai.models.utils import conv, deconv

        model.g_a[0] = conv(channels, N)
        model.g_s[-1] = deconv(N, channels)
    model.lmbda = list(LAMBDAS)
    model.levels = len(LAMBDAS)
    model.Gain = torch.nn.Parameter(torch.tensor(GAINS, dtype=torch.float32), requires_grad=False)
    return model


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.nz"


def torch_inference(fn):
    """Run under torch.inference_mode (torch is imported lazily by this module)."""
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@dataclass
class Coded:
    z: bytes
    y: bytes
    z_shape: tuple[int, int]


class ImageModel:
    """A trained model, frozen, ready to code images at any of its qualities."""

    def __init__(self, arch: str, path: Path | None = None):
        import torch

        from .. import checkpoint

        path = Path(path or weights_path(arch))
        if not path.exists():
            raise NzipError(f"no trained weights for image model {arch!r} at {path}")
        with checkpoint.open(path) as box:
            meta = box.metadata()
        # the weights' identity, recorded in every payload: other weights cannot decode it
        self.weights_id = f"{xxh3(path.read_bytes()):016x}"
        if meta.get("arch") != arch:
            raise NzipError(f"{path} holds weights of {meta.get('arch')!r}, not {arch!r}")
        self.meta = meta
        state = checkpoint.load(path)
        self.arch = arch
        self.mean = arch == "mbt2018-mean"
        model = build(arch, channels=int(meta.get("channels", 3)))
        # load_state_dict with the stored CDF tables: CompressAI's loader resizes its
        # entropy-coder buffers to the stored ones (never recomputed, see the module doc)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        model.eval()
        self.model = model
        self.gains = model.Gain.detach().double()
        # the entropy-parameter path, in float64 on the CPU (see the module docstring)
        self._on_device = {}
        self._lock = threading.Lock()
        self.h_s64 = self.on_device("h_s", "cpu", torch.float64)
        self.quant_offsets = self.on_device("QuantABCD", "cpu", torch.float64)
        self.qualities = tuple(range(1, len(LAMBDAS) + 1))

    def on_device(self, part: str, device, dtype):
        """A copy of one transform (g_a, h_a, g_s) on a device in a dtype, built once."""
        import torch

        key = (part, str(torch.device(device)), dtype)
        with self._lock:
            if key not in self._on_device:
                self._on_device[key] = copy.deepcopy(getattr(self.model, part)).to(device, dtype)
            return self._on_device[key]

    def check_quality(self, quality: int) -> None:
        if quality not in self.qualities:
            raise BadParameterError(f"image model {self.arch} has qualities {list(self.qualities)}, not {quality!r}")

    def entropy_params(self, z_hat, quality: int):
        """(indexes, scales, means) of the gain-scaled latent's Gaussians, from the decoded
        hyper-latent; indexes pick the entropy coder's table per element."""
        import torch

        params = self.h_s64(z_hat.double())
        if self.mean:
            scales, means = params.chunk(2, 1)
        else:
            scales, means = params, torch.zeros_like(params)
        gain = self.gains[quality - 1]
        indexes = self.model.gaussian_conditional.build_indexes(scales * gain)
        return indexes, scales * gain, means * gain

    def reconstruct(self, symbols, scales, means, quality: int):
        """The latent from its symbols: CompressAI's vbr reconstruction, which moves each
        nonzero symbol toward zero by an offset learned from its scale and the gain."""
        import torch

        gain = self.gains[quality - 1]
        magnitude, signs = symbols.abs(), torch.sign(symbols)
        stdev = self.model.gaussian_conditional.lower_bound_scale(scales)
        features = torch.stack((stdev, gain.expand(stdev.shape)), dim=4)
        offsets = -self.quant_offsets(features).squeeze(4)
        offsets[magnitude < 1e-4] = 0
        return (signs * (magnitude + offsets) + means) / gain

    @torch_inference
    def compress(self, x, quality: int, device=None) -> Coded:
        """x: 1 x C x H x W float tensor in [0, 1], H and W multiples of PAD."""
        import torch

        self.check_quality(quality)
        device = torch.device(device or "cpu")
        x = x.to(device, torch.float32)
        # the analysis side may run in float32 anywhere: only the decoder must be exact
        y = self.on_device("g_a", device, torch.float32)(x)
        z = self.on_device("h_a", device, torch.float32)(y if self.mean else y.abs()).cpu()
        y = y.cpu().double()
        eb = self.model.entropy_bottleneck
        z_string = eb.compress(z)[0]
        z_hat = eb.decompress([z_string], z.shape[-2:])
        indexes, _, means = self.entropy_params(z_hat, quality)
        y_string = self.model.gaussian_conditional.compress(y * self.gains[quality - 1], indexes, means=means)[0]
        return Coded(z_string, y_string, tuple(z.shape[-2:]))

    @torch_inference
    def decompress(self, coded: Coded, quality: int, device=None):
        """The decoded image as a 1 x 3 x H x W float64 tensor in [0, 1] on `device`."""
        import torch

        self.check_quality(quality)
        eb = self.model.entropy_bottleneck
        try:
            z_hat = eb.decompress([coded.z], coded.z_shape)
            indexes, scales, means = self.entropy_params(z_hat, quality)
            symbols = self.model.gaussian_conditional.decompress([coded.y], indexes, torch.float64)
        except (RuntimeError, ValueError) as exc:
            raise CorruptDataError(f"image payload does not decode: {exc}") from None
        y_hat = self.reconstruct(symbols, scales, means, quality)
        device = torch.device(device or "cpu")
        return self.on_device("g_s", device, torch.float64)(y_hat.to(device)).clamp_(0, 1)


# The learned codecs' payloads begin alike: magic (its last byte the layout's version),
# the weights' identity (8 bytes), u32 frame height and width, u16 hyper-latent height and
# width, u32 length Z of the hyper-latent stream; then the codec's own fields, Z bytes of
# hyper-latent stream and the latent stream.
_HEADER = struct.Struct("<4s8sIIHHI")


def write_payload(magic: bytes, model: ImageModel, h: int, w: int, coded: Coded, fields: bytes = b"") -> bytes:
    head = _HEADER.pack(magic, bytes.fromhex(model.weights_id), h, w, *coded.z_shape, len(coded.z))
    return head + fields + coded.z + coded.y


def read_payload(payload: bytes, magic: bytes, model: ImageModel, codec_id: str, kind: str,
                 weights_label: str = "") -> tuple[int, int, tuple[int, int], int, int]:
    """Check a payload's common header against `magic` and the model's weights: returns
    (frame height, width, hyper-latent shape, Z, offset of the codec's own fields)."""
    if len(payload) < _HEADER.size:
        raise CorruptDataError(f"{codec_id}: payload of {len(payload)} bytes is truncated")
    found, weights, h, w, zh, zw, zlen = _HEADER.unpack_from(payload)
    if found[:3] != magic[:3]:
        raise FormatError(f"{codec_id}: not an nzip {kind} payload")
    if found != magic:
        raise FormatError(f"{codec_id}: payload layout version {found[3]} is newer than this nzip reads")
    if weights.hex() != model.weights_id:
        label = f"{weights_label} " if weights_label else ""
        raise CorruptDataError(f"{codec_id}: encoded with other {label}weights ({weights.hex()}); "
                               f"this nzip has {model.weights_id}")
    if zh != -(-h // PAD) or zw != -(-w // PAD):
        raise CorruptDataError(f"{codec_id}: payload header does not match the frame (corrupt)")
    return h, w, (zh, zw), zlen, _HEADER.size


def coded_at(payload: bytes, at: int, zlen: int, z_shape: tuple[int, int], codec_id: str) -> Coded:
    """The two streams that follow a payload's fields at offset `at`."""
    if at + zlen > len(payload):
        raise CorruptDataError(f"{codec_id}: payload header does not match the frame (corrupt)")
    return Coded(payload[at:at + zlen], payload[at + zlen:], z_shape)


_models: dict[str, ImageModel] = {}
_models_lock = threading.Lock()


def get_model(arch: str, name: str | None = None) -> ImageModel:
    """A shipped model (weights file `name`, default the architecture's), loaded once."""
    name = name or arch
    with _models_lock:
        if name not in _models:
            _models[name] = ImageModel(arch, weights_path(name))
        return _models[name]
