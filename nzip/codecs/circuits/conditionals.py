"""P(x_i | x_<i) of a quantized HCLT, for every variable in coding order, batched over
samples, computed exactly alike by the encoder and the decoder.

Order: a depth-first pre-order of the tree (a node, then each child's subtree in turn).
When node i comes up, nothing inside its subtree is known yet, so

    P(x_i = v | x_<i)  ~  sum_k  out_i(k) * P(x_i = v | z_i = k)

where out_i(k) ~ P(z_i = k, x_<i) is the top-down ('outside') vector. It follows from the
parent's:  out_i = (out_p * in_p) @ T_i, with in_p(a) = P(x_p | z_p = a) times the upward
messages of the parent's children finished so far. Each child's message T_c @ in_c is
folded into in_p once its subtree is done. So a variable costs O(K^2 + K*V) per sample,
against O(D * K^2) for recomputing the circuit's marginals from scratch (`naive`).

Exactness: every vector is kept as non-negative integers below 2**B in float64 (B = 25),
renormalised after each step by a power of two and a floor. With parameters of at most
16 (transition) or 20 (leaf) bits and K <= 64, every product and every matmul sum stays
below 2**53, so float64 computes it exactly in any order: the results are the same bits
on any CPU or GPU, with any BLAS and any batch composition.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .hclt import depths, levels
from .quantized import QuantizedHCLT

B = 25  # bits of every normalised vector


def coding_order(parent: np.ndarray) -> tuple[np.ndarray, list[tuple[bool, int]]]:
    """(order, events): the pre-order of the tree, and the walk's events (True, i) = code
    node i, (False, i) = node i's subtree is complete."""
    d = len(parent)
    children = [[] for _ in range(d)]
    for i in range(d):  # ascending, so children come in index order
        if parent[i] >= 0:
            children[parent[i]].append(i)
    root = int(np.flatnonzero(np.asarray(parent) < 0)[0])
    events, order, stack = [], [], [(root, True)]
    while stack:
        node, entering = stack.pop()
        events.append((entering, node))
        if entering:
            order.append(node)
            stack.append((node, False))
            stack.extend((c, True) for c in reversed(children[node]))
    return np.array(order, np.int64), events


def normalise(v):
    """v (n x K, non-negative integers in float64, each row with a positive entry) scaled
    by a power of two so that its row maximum lies in [2**(B-1), 2**B), then floored."""
    import torch

    _, exponent = torch.frexp(v.amax(-1, keepdim=True))  # max < 2**exponent
    return torch.floor(torch.ldexp(v, B - exponent))


class Walk:
    """The model's tables as float64 tensors on a device, and the coding order."""

    def __init__(self, model: QuantizedHCLT, device="cpu"):
        import torch

        self.device = torch.device(device)
        self.order, self.events = coding_order(model.parent)
        self.parent = model.parent.astype(np.int64)
        as_f64 = lambda a: torch.as_tensor(np.asarray(a, np.float64), device=self.device)  # noqa: E731
        self.leaves = as_f64(model.leaves())  # D x K x V
        self.transition = as_f64(model.transition)  # D x K x K
        self.prior = as_f64(model.prior)

    def run(self, n: int, pick: Callable[[int, "object"], "object"]) -> None:
        """Walk n samples through the coding order. At each variable i, pick(i, probs)
        gets the n x V unnormalised integer probabilities (float64 tensor) and returns the
        n symbols (int64 tensor): the encoder codes the known ones, the decoder decodes."""
        outside, inside = {}, {}
        for entering, i in self.events:
            p = self.parent[i]
            if entering:
                if p < 0:
                    out = self.prior.expand(n, -1)
                else:
                    out = normalise(normalise(outside[p] * inside[p]) @ self.transition[i])
                x = pick(i, out @ self.leaves[i])
                outside[i] = out
                inside[i] = normalise(self.leaves[i].T[x])
            else:
                if p >= 0:
                    message = normalise(inside[i] @ self.transition[i].T)
                    inside[p] = normalise(inside[p] * message)
                del outside[i], inside[i]


def naive(model: QuantizedHCLT, x: np.ndarray, order: np.ndarray, upto: int) -> np.ndarray:
    """P(x_i = . | x_<i) for the first `upto` variables of `order`, each recomputed from
    scratch: an upward pass over the whole tree with the variables before i observed and
    the rest summed out, then the outside vector down the root-to-i path. O(D * K^2) per
    variable; float64 with per-vector rescaling, no quantization. Returns upto x n x V,
    each row summing to 1. For testing and for measuring the incremental walk's gain."""
    import torch

    # the same integer tables as the walk (their rows sum to about, not exactly, a power
    # of two, so normalising them would be a slightly different model)
    leaves = torch.as_tensor(model.leaves())
    trans = torch.as_tensor(model.transition.astype(np.float64))
    prior = torch.as_tensor(model.prior.astype(np.float64))
    parent = model.parent.astype(np.int64)
    d, k = trans.shape[:2]
    n = len(x)
    xt = torch.as_tensor(x.astype(np.int64))
    by_depth = levels(depths(parent))
    out = []
    for t in range(upto):
        i = int(order[t])
        observed = torch.zeros(d, dtype=torch.bool)
        observed[torch.as_tensor(order[:t])] = True
        # leaf factors: P(x_j | z_j) where observed, 1 elsewhere (summed out), n x D x K
        lf = leaves.permute(0, 2, 1)[torch.arange(d), xt]
        lf = torch.where(observed[None, :, None], lf, torch.ones(()))
        up = lf.clone()
        messages = torch.ones(n, d, k, dtype=torch.float64)  # message of node j to its parent
        for nodes in by_depth:
            idx = torch.as_tensor(nodes)
            m = torch.einsum("nsb,sab->nsa", up[:, idx], trans[idx])
            messages[:, idx] = m / m.amax(-1, keepdim=True)
            for j in nodes:  # fold each message into its parent (siblings share a parent)
                up[:, parent[j]] *= messages[:, j]
        path = [i]
        while parent[path[-1]] >= 0:
            path.append(int(parent[path[-1]]))
        path.reverse()
        o = prior.expand(n, -1)
        for a, b in zip(path, path[1:]):
            # everything at a except the subtree towards b
            rest = o * up[:, a] / messages[:, b]
            o = rest @ trans[b]
            o = o / o.amax(-1, keepdim=True)
        probs = o @ leaves[i]  # no evidence inside subtree(i) in pre-order
        out.append((probs / probs.sum(-1, keepdim=True)).numpy())
    return np.stack(out)
