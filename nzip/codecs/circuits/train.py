"""Training HCLTs: mini-batch EM with a decaying step, Laplace pseudocounts, and (for
images) augmentation by small random shifts, on the CPU or on CUDA.

Mini-batch EM: each batch's expected counts (the circuit flows, got as the gradients of
the batch log-likelihood with respect to the log-parameters) are normalised into fresh
parameters and blended in with weight `step`. The parameters stay on the device between
batches; numpy copies are made once per epoch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .hclt import HCLT, log_likelihood, total_log_likelihood


def shifted(x, image_shape: tuple[int, int], shift: int, prob: float, generator):
    """Each image (row of x, n x H*W) moved by up to `shift` pixels in each direction, with
    probability `prob`, the uncovered border filled with zeros (MNIST's background).
    Digits stay digits, so the model sees more plausible images than the training set has."""
    import torch

    if shift <= 0 or prob <= 0:
        return x
    n = x.shape[0]
    h, w = image_shape
    images = x.reshape(n, h, w)
    moved = torch.rand(n, generator=generator, device="cpu") < prob
    dy = torch.randint(-shift, shift + 1, (n,), generator=generator, device="cpu") * moved
    dx = torch.randint(-shift, shift + 1, (n,), generator=generator, device="cpu") * moved
    padded = torch.nn.functional.pad(images, (shift, shift, shift, shift))
    rows = (torch.arange(h)[None, :] + shift - dy[:, None]).to(x.device)  # n x H
    cols = (torch.arange(w)[None, :] + shift - dx[:, None]).to(x.device)  # n x W
    out = padded[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.reshape(n, h * w)


class EMTrainer:
    """Online EM (Cappe & Moulines) on one device: running expected counts S, scaled to the
    whole data set, move towards each batch's counts with weight `step`; the parameters
    are S plus a Dirichlet pseudocount, normalised. Unlike blending normalised parameters,
    a state that a batch happens not to use keeps what it has learned. The model's numpy
    arrays are refreshed by `sync()`."""

    def __init__(self, model: HCLT, size: int, device="cpu", pseudocount: float = 1.0):
        import torch

        self.model, self.size, self.device = model, size, torch.device(device)
        self.pseudocount = pseudocount  # per distribution, spread evenly over its entries
        self.levels = model.levels()
        self.params = {name: torch.tensor(getattr(model, name), device=self.device, dtype=torch.float32)
                       for name in model.param_names()}
        self.stats = {name: p.double() * (size / p.shape[-1]) for name, p in self.params.items()}

    def flows(self, x) -> tuple[dict, float]:
        """Expected counts of a batch x (n x D int64 tensor on the device) and its summed
        log-likelihood in nats."""
        import torch

        logs = {name: torch.log(p.clamp_min(1e-30)).requires_grad_() for name, p in self.params.items()}
        ll = log_likelihood(logs, self.model.parent, self.levels, self.model.root, x).sum()
        ll.backward()
        return {name: log_p.grad.double() for name, log_p in logs.items()}, float(ll.detach())

    def update(self, flows: dict, count: int, step: float) -> None:
        import torch

        with torch.no_grad():
            for name, f in flows.items():
                s = self.stats[name].mul_(1 - step).add_(f, alpha=step * self.size / count)
                s = s + self.pseudocount / s.shape[-1]
                self.params[name] = (s / s.sum(-1, keepdim=True)).float()

    def sync(self) -> HCLT:
        for name, p in self.params.items():
            setattr(self.model, name, p.cpu().numpy().copy())
        return self.model


def train(data: np.ndarray, hidden: int, *, shared: int = 0, epochs: int = 50, batch: int = 500,
          step: tuple[float, float] = (0.5, 0.02), pseudocount: float = 1.0, full_batch: int = 0, image_shape: tuple[int, int] | None = None,
          shift: int = 0, shift_prob: float = 0.5, values: int = 256, seed: int = 0, device="cpu",
          valid: np.ndarray | None = None, log: Callable[[str], None] | None = None,
          model: HCLT | None = None) -> HCLT:
    """An HCLT fitted to `data` (n x D integers < values) by mini-batch EM.

    step: (first, last) online-EM step size, decayed geometrically over the epochs.
    pseudocount: Dirichlet prior mass per distribution (spread evenly over its entries).
    full_batch: epochs of full-batch EM to finish (counts of all of `data`, unaugmented).
    shift, shift_prob, image_shape: random shifts of images (H x W = D) for augmentation.
    valid: held-out rows whose bits per dimension are logged after each epoch.
    model: continue training this model instead of starting a new one.
    """
    import torch

    # tiny flows are subnormal floats, which slow CPU EM several-fold; flushing them is
    # process-wide state, so it is switched on only while training
    flush = torch.device(device).type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _train(data, hidden, shared, epochs, batch, step, pseudocount, full_batch, image_shape, shift,
                      shift_prob, values, seed, device, valid, log, model)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _train(data, hidden, shared, epochs, batch, step, pseudocount, full_batch, image_shape, shift, shift_prob,
           values, seed, device, valid, log, model) -> HCLT:
    import torch

    data = np.ascontiguousarray(data.reshape(len(data), -1))
    if model is None:
        model = HCLT.from_data(data, hidden, values=values, seed=seed, shared=shared)
    trainer = EMTrainer(model, len(data), device, pseudocount)
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.as_tensor(data, device=device).long()
    d = data.shape[1]

    def report(epoch, kind, rate, total):
        if log is not None:
            line = f"epoch {epoch + 1}/{epochs + full_batch} {kind} step {rate:.4f} train bpd {-total / (len(data) * d * np.log(2)):.4f}"
            if valid is not None and (epoch % 5 == 4 or epoch >= epochs + full_batch - 1):
                line += f" valid bpd {held_out_bpd(trainer, valid):.4f}"
            log(line)

    for epoch in range(epochs):
        rate = step[0] * (step[1] / step[0]) ** (epoch / max(epochs - 1, 1))
        order = torch.randperm(len(data), generator=generator).to(x_all.device)
        total = 0.0
        for i in range(0, len(data), batch):
            x = x_all[order[i:i + batch]]
            if image_shape is not None:
                x = shifted(x, image_shape, shift, shift_prob, generator)
            flows, ll = trainer.flows(x)
            trainer.update(flows, len(x), rate)
            total += ll
        report(epoch, "mini-batch", rate, total)
    for epoch in range(epochs, epochs + full_batch):
        summed, total = None, 0.0
        for i in range(0, len(data), batch):
            flows, ll = trainer.flows(x_all[i:i + batch])
            summed = flows if summed is None else {k: summed[k] + flows[k] for k in flows}
            total += ll
        trainer.update(summed, len(data), 1.0)
        report(epoch, "full-batch", 1.0, total)
    return trainer.sync()


def held_out_bpd(trainer: EMTrainer, data: np.ndarray) -> float:
    """Bits per dimension of `data` under the trainer's current (device) parameters."""
    import torch

    logs = {name: torch.log(p.clamp_min(1e-30)) for name, p in trainer.params.items()}
    total = total_log_likelihood(logs, trainer.model, data, device=trainer.device)
    return -total / (len(data) * data.shape[1] * np.log(2))
