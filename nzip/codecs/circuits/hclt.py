"""Hidden Chow-Liu Trees (HCLT): the probabilistic circuit of 'Lossless Compression with
Probabilistic Circuits' (Liu, Mandt, Van den Broeck, ICLR 2022).

Structure: a Chow-Liu tree over the D variables (the maximum spanning tree of their
pairwise mutual information, estimated on training data binned to a few levels), rooted
at its centre. Each tree node i gets a latent variable z_i with K states; z_i emits x_i
through a categorical leaf P(x_i | z_i) over V values, and depends on its parent's latent
through P(z_i | z_parent). As a circuit: a product node per (node, state) multiplying its
leaf and one sum node per child edge (a K x K layer), and a sum node at the root.

Because the circuit is a tree of K-state latents, every query is a message pass over the
tree: the likelihood of complete samples is the upward pass, done a depth level at a time
for a whole batch (vectorized by layer, CPU or CUDA). EM's expected counts are the
gradients of the log-likelihood with respect to the log-parameters (the circuit flows),
so one autograd backward gives them (train.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mutual_information(data: np.ndarray, bins: int = 8) -> np.ndarray:
    """D x D mutual information (nats) of the variables, from their values binned to
    `bins` equal-width levels over [0, V): one matrix product of one-hot codes."""
    import torch

    n, d = data.shape
    levels = int(data.max()) + 1 if data.size else 1
    binned = torch.from_numpy((data.astype(np.int64) * bins) // max(levels, 1))
    onehot = torch.zeros(n, d * bins)
    onehot.scatter_(1, binned + torch.arange(d) * bins, 1.0)
    joint = (onehot.T @ onehot).reshape(d, bins, d, bins).permute(0, 2, 1, 3) / n  # p_ij(a, b)
    marginal = onehot.mean(0).reshape(d, bins)
    outer = marginal[:, None, :, None] * marginal[None, :, None, :]
    terms = torch.where(joint > 0, joint * (torch.log(joint.clamp_min(1e-30)) - torch.log(outer.clamp_min(1e-30))),
                        torch.zeros(()))
    mi = terms.sum((2, 3)).double().numpy()
    np.fill_diagonal(mi, 0)
    return mi


def chow_liu_tree(mi: np.ndarray) -> np.ndarray:
    """Edges (D-1 x 2) of the maximum spanning tree of the MI matrix (Prim, O(D^2))."""
    d = mi.shape[0]
    in_tree = np.zeros(d, bool)
    in_tree[0] = True
    best = mi[0].copy()
    link = np.zeros(d, np.int64)
    edges = []
    for _ in range(d - 1):
        cand = np.where(in_tree, -np.inf, best)
        j = int(np.argmax(cand))
        edges.append((int(link[j]), j))
        in_tree[j] = True
        better = mi[j] > best
        best = np.where(better, mi[j], best)
        link = np.where(better, j, link)
    return np.array(edges, np.int64).reshape(-1, 2)


def root_at_centre(edges: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(parent, depth) arrays of the tree rooted at a centre (the middle of its longest
    path), which minimises the depth and so the length of every message chain."""
    adj = [[] for _ in range(d)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)

    def bfs(start):
        parent = np.full(d, -1, np.int64)
        depth = np.full(d, -1, np.int64)
        depth[start] = 0
        order = [start]
        for u in order:
            for v in adj[u]:
                if depth[v] < 0:
                    depth[v], parent[v] = depth[u] + 1, u
                    order.append(v)
        return parent, depth

    _, depth0 = bfs(0)
    far = int(np.argmax(depth0))
    parent_far, depth_far = bfs(far)
    other = int(np.argmax(depth_far))
    path = [other]
    while path[-1] != far:
        path.append(int(parent_far[path[-1]]))
    return bfs(path[len(path) // 2])


def depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node of a rooted tree given as parent indices (-1 at the root): all
    nodes climb one step at a time together, so it costs O(depth * D) vectorized."""
    parent = np.asarray(parent, np.int64)
    depth = np.zeros(len(parent), np.int64)
    node = parent.copy()
    while (node >= 0).any():
        depth += node >= 0
        node = np.where(node >= 0, parent[np.maximum(node, 0)], -1)
    return depth


def levels(depth: np.ndarray) -> list[np.ndarray]:
    """Non-root nodes grouped by depth, deepest first (the upward pass's order)."""
    return [np.flatnonzero(depth == t) for t in range(int(depth.max()), 0, -1)]


@dataclass
class HCLT:
    """An HCLT's structure and parameters (probabilities, float32 numpy arrays).

    Leaves are either one categorical per (node, state) -- `emission`, D x K x V -- or
    shared: each (node, state) mixes M categoricals common to all nodes (`leaf_mix`,
    D x K x M, over `leaf_dists`, M x V). Sharing cuts the leaf parameters from D*K*V to
    D*K*M + M*V, which generalises better from few images and keeps the model small.
    """

    parent: np.ndarray  # (D,) int64, -1 at the root
    depth: np.ndarray  # (D,) int64
    prior: np.ndarray  # (K,) P(z_root)
    transition: np.ndarray  # (D, K, K) P(z_i = b | z_parent = a) at [i, a, b]; the root's unused
    emission: np.ndarray | None = None  # (D, K, V) P(x_i = v | z_i = k)
    leaf_mix: np.ndarray | None = None  # (D, K, M) P(leaf m | z_i = k)
    leaf_dists: np.ndarray | None = None  # (M, V) P(x = v | leaf m)

    @property
    def num_vars(self) -> int:
        return len(self.parent)

    @property
    def hidden(self) -> int:
        return self.prior.shape[0]

    @property
    def shared(self) -> bool:
        return self.emission is None

    @property
    def values(self) -> int:
        return (self.leaf_dists if self.shared else self.emission).shape[-1]

    @property
    def root(self) -> int:
        return int(np.flatnonzero(self.parent < 0)[0])

    def param_names(self) -> tuple[str, ...]:
        return ("prior", "transition") + (("leaf_mix", "leaf_dists") if self.shared else ("emission",))

    @classmethod
    def from_data(cls, data: np.ndarray, hidden: int, values: int = 256, seed: int = 0, bins: int = 8,
                  shared: int = 0) -> "HCLT":
        """The Chow-Liu structure of the data (n x D integers < values), with randomly
        initialised parameters; `shared` = M > 0 shares M leaf distributions."""
        d = data.shape[1]
        parent, depth = root_at_centre(chow_liu_tree(mutual_information(data, bins)), d)
        rng = np.random.default_rng(seed)

        def normalised(x):
            return (x / x.sum(-1, keepdims=True)).astype(np.float32)

        counts = np.stack([np.bincount(data[:, i], minlength=values) for i in range(d)]).astype(np.float64) + 1
        prior, transition = normalised(rng.uniform(0.5, 1.5, hidden)), normalised(rng.uniform(0.5, 1.5, (d, hidden, hidden)))
        if shared:
            # leaf distributions start as the pooled value histogram cut into M bands of
            # roughly equal mass (each band keeps some mass everywhere), so that each one
            # starts out describing a different brightness
            pooled = counts.sum(0) / counts.sum()
            band = np.minimum((np.cumsum(pooled) - pooled / 2) * shared, shared - 1).astype(np.int64)
            dists = 0.02 * pooled[None, :] + (band[None, :] == np.arange(shared)[:, None]) * pooled[None, :]
            dists = dists * rng.uniform(0.8, 1.2, dists.shape)
            mix = normalised(rng.uniform(0.5, 1.5, (d, hidden, shared)))
            return cls(parent, depth, prior, transition, leaf_mix=mix, leaf_dists=normalised(dists))
        # emissions start near the empirical marginal of each variable, made distinct per state
        marg = counts / counts.sum(1, keepdims=True)
        emission = normalised(marg[:, None, :] * rng.uniform(0.5, 1.5, (d, hidden, values)))
        return cls(parent, depth, prior, transition, emission=emission)

    def levels(self) -> list[np.ndarray]:
        return levels(self.depth)


def leaf_log_values(logs: dict, x):
    """log P(x_i | z_i = k) for a batch x (n x D int64 tensor) -> n x D x K."""
    import torch

    d = x.shape[1]
    if "emission" in logs:
        return logs["emission"].permute(0, 2, 1)[torch.arange(d, device=x.device), x]
    per_leaf = torch.exp(logs["leaf_dists"]).T[x]  # n x D x M
    return torch.log(torch.einsum("ndm,dkm->ndk", per_leaf, torch.exp(logs["leaf_mix"])).clamp_min(1e-38))


def log_likelihood(logs: dict, parent, levels, root, x):
    """log P(x) of a batch (n x D int64 tensor) by the upward pass; differentiable in the
    log-parameters (a dict of torch tensors named as HCLT's fields), which is how EM gets
    its expected counts."""
    import torch

    acc = leaf_log_values(logs, x)
    log_transition = logs["transition"]
    for nodes in levels:
        idx = torch.as_tensor(nodes, device=x.device)
        up = acc[:, idx, :]  # n x S x K, complete subtrees
        shift = up.amax(-1, keepdim=True)
        # message to the parent: log sum_b P(z_i = b | z_p = a) * exp(up_b)
        msg = torch.log(torch.einsum("nsb,sab->nsa", torch.exp(up - shift), torch.exp(log_transition[idx])).clamp_min(1e-38)) + shift
        acc = acc.index_add(1, torch.as_tensor(parent[nodes], device=x.device), msg)
    return torch.logsumexp(acc[:, root, :] + logs["prior"], -1)


def _log_params(model: HCLT, device, grad: bool) -> dict:
    import torch

    return {name: torch.tensor(np.log(np.maximum(getattr(model, name), 1e-30)), device=device, requires_grad=grad)
            for name in model.param_names()}


def total_log_likelihood(logs: dict, model: HCLT, data: np.ndarray, batch: int = 1000, device="cpu") -> float:
    """Summed log P(x) (nats) of a dataset under the log-parameters `logs`, in batches."""
    import torch

    levels_ = model.levels()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = torch.as_tensor(np.array(data[i:i + batch]), device=device).long()
            total += float(log_likelihood(logs, model.parent, levels_, model.root, x).sum())
    return total


def mean_log_likelihood(model: HCLT, data: np.ndarray, batch: int = 1000, device="cpu") -> float:
    """Nats per sample over a dataset."""
    return total_log_likelihood(_log_params(model, device, False), model, data, batch, device) / len(data)


def bits_per_dim(model: HCLT, data: np.ndarray, device="cpu") -> float:
    return -mean_log_likelihood(model, data, device=device) / (data.shape[1] * np.log(2))
