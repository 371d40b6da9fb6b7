"""An HCLT with integer parameters: the exact model that the `pc` codec codes with.

Coding needs probabilities that the encoder and the decoder compute bit for bit alike on
any machine. So the model used for coding is not the float HCLT that training produced
but a rounding of it to integers (probabilities times a power of two). Every quantity the
coder derives from it is an integer held in float64 and kept below 2**53, where float64
arithmetic is exact whatever the summation order, BLAS or device (see conditionals.py).

Precision (bits of each table's rows, which sum to about 2**bits):
    prior, transition: 16        leaf_mix: 16        leaf_dists, emission: 20
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hclt import HCLT, depths

BITS = {"prior": 16, "transition": 16, "leaf_mix": 16, "leaf_dists": 20, "emission": 20}
LEAF_BITS = 20  # the materialised leaf table P(x_i = v | z_i = k) is in units of 2**-20
MAX_HIDDEN = 64  # keeps every sum in conditionals.py below 2**53 (see there)


@dataclass
class QuantizedHCLT:
    """Structure, integer parameters and what the data looks like.

    parent: (D,) int32, -1 at the root.  prior: (K,) uint16.  transition: (D, K, K) uint16,
    [i, a, b] ~ P(z_i = b | z_parent = a) * 2**16.  Leaves: either emission (D, K, V) uint32
    or leaf_mix (D, K, M) uint16 with leaf_dists (M, V) uint32.
    data_shape: the shape of one sample (e.g. (28, 28)), with prod = D.
    value_range: (lo, hi) of the sample values; V = hi - lo + 1.
    """

    parent: np.ndarray
    prior: np.ndarray
    transition: np.ndarray
    data_shape: tuple[int, ...]
    value_range: tuple[int, int]
    emission: np.ndarray | None = None
    leaf_mix: np.ndarray | None = None
    leaf_dists: np.ndarray | None = None
    training: dict = field(default_factory=dict)  # how it was trained (informational)
    identity: bytes = b""  # XXH3-64 of its file; set by model_file
    _leaves: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def num_vars(self) -> int:
        return len(self.parent)

    @property
    def hidden(self) -> int:
        return len(self.prior)

    @property
    def values(self) -> int:
        return self.value_range[1] - self.value_range[0] + 1

    @property
    def shared(self) -> int:
        return 0 if self.leaf_mix is None else self.leaf_mix.shape[2]

    @property
    def root(self) -> int:
        return int(np.flatnonzero(self.parent < 0)[0])

    def leaves(self) -> np.ndarray:
        """P(x_i = v | z_i = k) * 2**20 as integers in float64, D x K x V (cached): for
        shared leaves floor(leaf_mix @ leaf_dists / 2**16), an exact integer product."""
        if self._leaves is None:
            if self.leaf_mix is None:
                table = self.emission.astype(np.float64)
            else:
                table = np.floor(self.leaf_mix.astype(np.float64) @ self.leaf_dists.astype(np.float64)
                                 / 2.0 ** BITS["leaf_mix"])
            self._leaves = np.maximum(table, 1.0)
        return self._leaves

    def to_hclt(self) -> HCLT:
        """The float model these integers stand for (to measure it or train it further)."""
        parent = self.parent.astype(np.int64)

        def norm(x):
            x = x.astype(np.float64)
            return (x / x.sum(-1, keepdims=True)).astype(np.float32)

        model = HCLT(parent, depths(parent), norm(self.prior), norm(self.transition))
        if self.leaf_mix is None:
            model.emission = norm(self.emission)
        else:
            model.leaf_mix, model.leaf_dists = norm(self.leaf_mix), norm(self.leaf_dists)
        return model


def _to_int(p: np.ndarray, bits: int, dtype) -> np.ndarray:
    """Probabilities (rows summing to 1) -> integers of about `bits` bits, each >= 1 so
    that every value stays codable."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(p.astype(np.float64) * 2.0 ** bits), 1, top).astype(dtype)


def quantize(model: HCLT, data_shape: tuple[int, ...], value_range: tuple[int, int],
             training: dict | None = None) -> QuantizedHCLT:
    """Round a trained HCLT to the integer model the codec uses."""
    if model.hidden > MAX_HIDDEN:
        raise ValueError(f"the pc codec handles up to {MAX_HIDDEN} hidden states, not {model.hidden}")
    if int(np.prod(data_shape)) != model.num_vars:
        raise ValueError(f"data shape {tuple(data_shape)} does not hold {model.num_vars} variables")
    if value_range[1] - value_range[0] + 1 != model.values:
        raise ValueError(f"value range {tuple(value_range)} does not have {model.values} values")
    q = QuantizedHCLT(model.parent.astype(np.int32), _to_int(model.prior, BITS["prior"], np.uint16),
                      _to_int(model.transition, BITS["transition"], np.uint16), tuple(int(s) for s in data_shape),
                      (int(value_range[0]), int(value_range[1])), training=dict(training or {}))
    if model.shared:
        q.leaf_mix = _to_int(model.leaf_mix, BITS["leaf_mix"], np.uint16)
        q.leaf_dists = _to_int(model.leaf_dists, BITS["leaf_dists"], np.uint32)
    else:
        q.emission = _to_int(model.emission, BITS["emission"], np.uint32)
    return q
