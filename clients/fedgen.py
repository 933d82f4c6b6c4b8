"""Strategy-supplied local objectives: FedGen's generator regulariser.

FedGen (Zhu, Hong, Zhou, ICML 2021, arXiv 2105.10056; official ``userpFedGen.py``;
docs/strategies/fedgen.md (Client objective)). With the server's latent generator G (frozen,
eval mode) a client minimises, per minibatch (x, y) of size B,

    L = CE(f(x), y) + (B_gen / B) * alpha_t * L_gen + beta_t * L_lat
    L_gen = (1/B_gen) sum_i CE(h(G(eps_i, y_hat_i)), y_hat_i),  y_hat ~ U(available labels)
    L_lat = KL(p || softmax(f(x))),  p = softmax(h(G(eps, y))) detached, one eps per sample

L_gen reaches only the head h; L_lat reaches the whole model f. The objective is
a :data:`~clients.base.LossFn`, so any trainer (first- or zeroth-order) minimises
it. Noise and labels are drawn once per minibatch and reused while the trainer
evaluates the same ``x`` again (zeroth-order estimators need one deterministic
objective per step).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clients.base import FitPlan, LossFn, local_loop
from fedapp.config import FedGenConfig
from fedapp.task.data import Arrays
from fedapp.task.fedgen import (
    LatentGenerator,
    RegularizerRound,
    sample_labels,
    sample_noise,
)
from fedapp.task.models import SplitModel
from fedapp.task.partition import label_histogram
from fedapp.task.seeding import torch_generator


class FedGenRegularizer:
    """The FedGen local objective as a :data:`~clients.base.LossFn`."""

    def __init__(
        self,
        generator: LatentGenerator,
        rnd: RegularizerRound,
        cfg: FedGenConfig,
        batch_size: int,
        seed: int,
    ) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.alpha, self.beta = rnd.alpha, rnd.beta
        self.labels = rnd.labels or tuple(range(generator.num_classes))
        self.noise, self.synthetic = cfg.noise, cfg.synthetic_batch_size
        self.gen_ratio = cfg.synthetic_batch_size / batch_size  # official gen_ratio
        self.rng = torch_generator(seed)
        self._batch: Tensor | None = None  # the minibatch the cached draws belong to
        self._latents: tuple[Tensor, Tensor, Tensor] | None = None

    @torch.no_grad()
    def latents(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z for y (B, p), y_hat (B_gen,), z for y_hat (B_gen, p)), fixed per minibatch."""
        if self._batch is not x or self._latents is None:
            self._batch = x
            self.generator.to(x.device)
            d, n = self.generator.noise_dim, self.synthetic
            y_hat = sample_labels(self.labels, n, self.rng, x.device)  # (B_gen,)
            z_y = self.generator(sample_noise(len(y), d, self.noise, self.rng, x.device), y)
            z_hat = self.generator(sample_noise(n, d, self.noise, self.rng, x.device), y_hat)
            self._latents = (z_y, y_hat, z_hat)
        return self._latents

    def __call__(self, model: SplitModel, x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)  # (B, C)
        loss = F.cross_entropy(logits, y)
        z_y, y_hat, z_hat = self.latents(x, y)
        if self.beta > 0:
            target = F.softmax(model.head(z_y), dim=1).detach()  # (B, C)
            latent = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
            loss = loss + self.beta * latent
        if self.alpha > 0:
            generated = F.cross_entropy(model.head(z_hat), y_hat)
            loss = loss + self.gen_ratio * self.alpha * generated
        return loss


def fedgen_loss(
    rnd: RegularizerRound,
    cfg: FedGenConfig,
    num_classes: int,
    latent_dim: int,
    batch_size: int,
    seed: int,
) -> LossFn:
    """Build G from the message's state dict and return the regularised objective."""
    generator = LatentGenerator(
        num_classes, cfg.noise_dim, cfg.hidden_dim, latent_dim, cfg.embedding
    )
    generator.load_state_dict(rnd.generator)
    return FedGenRegularizer(generator, rnd, cfg, batch_size, seed)


def draw_counts(data: Arrays, plan: FitPlan, num_classes: int) -> list[int]:
    """Official per-round label counts: 1 + how often each label is drawn by the plan.

    Replays :func:`~clients.base.local_loop` with the plan's data seed, so the
    counted minibatches are exactly the ones the trainer used.
    """
    counts = np.ones(num_classes, dtype=np.int64)

    def count(x: Tensor, y: Tensor) -> float:
        counts[:] += np.bincount(y.numpy(), minlength=num_classes)
        return 0.0

    local_loop(data, plan, torch.device("cpu"), count)
    return [int(c) for c in counts]


#: ``fedgen.label-counts``: what a client reports as its label counts (decision G2,
#: docs/strategies/fedgen.md).
LABEL_COUNTS: dict[str, Callable[[Arrays, FitPlan, int], list[int]]] = {
    "histogram": lambda data, plan, num_classes: label_histogram(data.y, num_classes),
    "round-draws": draw_counts,
}
