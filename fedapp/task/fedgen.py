"""FedGen's maths: the latent generator, label weights, its losses and training step.

Paper: Zhu, Hong, Zhou, "Data-Free Knowledge Distillation for Heterogeneous
Federated Learning", ICML 2021, arXiv 2105.10056. Behaviour checked against the
official code (zhuangdizhu/FedGen @ dd5807c: ``generator.py``,
``serverpFedGen.py``, ``userpFedGen.py``); docs/strategies/fedgen.md is the project's reading.

The server learns G_w(eps, y) -> z, a label-conditioned generator of *latent
features* (inputs of the classifiers' last layer), such that the label-weighted
ensemble of the fresh client heads classifies z as y (teacher loss), while a
diversity loss keeps different noises apart. Clients then use G_w as a
regulariser (:mod:`clients.fedgen`).

Deviations from the official code, each an option (docs/strategies/fedgen.md (Project decisions)):

- decision G1: noise eps ~ N(0, I) by default (``uniform``: the official U[0, 1)).
- decision G2: label counts from each client's training histogram by default
  (``round-draws``: the official per-round draw counts, starting at 1); the
  qualified labels follow the counts' floor (``min_count``).

No Flower here: plain torch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NoiseKind = Literal["gaussian", "uniform"]


class LatentGenerator(nn.Module):
    """G_w(eps, y) = Linear(BN(ReLU(...))): [eps ; onehot(y)] -> hidden -> latent.

    Official ``generator.py`` (MNIST: noise 32, hidden 256, latent 32; 19,744
    parameters plus 512 BatchNorm buffers). With ``embedding`` the one-hot is
    replaced by ``Embedding(C, noise_dim)`` (the official ``--embedding`` option).
    """

    def __init__(
        self,
        num_classes: int,
        noise_dim: int,
        hidden_dim: int,
        latent_dim: int,
        embedding: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.noise_dim, self.latent_dim = num_classes, noise_dim, latent_dim
        self.label_embedding = nn.Embedding(num_classes, noise_dim) if embedding else None
        label_dim = noise_dim if embedding else num_classes
        self.hidden = nn.Sequential(
            nn.Linear(noise_dim + label_dim, hidden_dim),  # (B, hidden)
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
        )
        self.out = nn.Linear(hidden_dim, latent_dim)  # (B, latent), no activation

    def forward(self, eps: Tensor, y: Tensor) -> Tensor:
        """eps (B, noise_dim), y (B,) int64 -> z (B, latent_dim)."""
        if self.label_embedding is None:
            label = F.one_hot(y, self.num_classes).to(eps.dtype)  # (B, C)
        else:
            label = self.label_embedding(y)  # (B, noise_dim)
        return self.out(self.hidden(torch.cat([eps, label], dim=1)))


def sample_noise(
    n: int, dim: int, kind: NoiseKind, gen: torch.Generator, device: torch.device
) -> Tensor:
    """eps (n, dim): N(0, I) (``gaussian``, decision G1) or U[0, 1) (``uniform``, official).

    Drawn on the CPU from the private ``gen`` (never the global RNG), then moved.
    """
    draw = torch.randn if kind == "gaussian" else torch.rand
    return draw((n, dim), generator=gen).to(device)


def sample_labels(
    labels: Sequence[int], n: int, gen: torch.Generator, device: torch.device
) -> Tensor:
    """y (n,) drawn uniformly with replacement from ``labels``."""
    pool = torch.as_tensor(list(labels), dtype=torch.int64)
    return pool[torch.randint(len(pool), (n,), generator=gen)].to(device)


def label_weights(counts: Tensor, min_count: int = 0) -> tuple[Tensor, list[int]]:
    """alpha_k^y = c_k[y] / sum_j c_j[y] and the qualified labels Y_q.

    docs/strategies/fedgen.md (Generator objective).

    Parameters
    ----------
    counts
        (K, C) label counts of the K clients trained this round.
    min_count
        A label qualifies when some client counts more than this: 1 for the
        official draw counts (which start at 1), 0 for histograms.

    Returns
    -------
    weights
        (C, K); each qualified row sums to 1; labels nobody holds get zeros.
    qualified
        The labels the generator is trained on.
    """
    counts = counts.to(torch.float64)
    totals = counts.sum(dim=0)  # (C,)
    weights = (counts / totals.clamp_min(1e-12)).T  # (C, K)
    qualified = [int(y) for y in torch.nonzero(counts.max(dim=0).values > min_count).flatten()]
    return weights.to(torch.float32), qualified


def diversity_loss(eps: Tensor, z: Tensor) -> Tensor:
    """L_div = exp(-mean_{i,j} D_eps(i, j) * D_z(i, j)) (official ``DiversityLoss``, l1).

    eps (B, noise_dim), z (B, latent); D_eps is the mean squared difference of
    the noises, D_z the mean absolute difference of the latents. Small when
    different noises give different latents.
    """
    d_eps = (eps.unsqueeze(0) - eps.unsqueeze(1)).pow(2).mean(dim=2)  # (B, B)
    d_z = (z.unsqueeze(0) - z.unsqueeze(1)).abs().mean(dim=2)  # (B, B)
    return torch.exp(-(d_eps * d_z).mean())


def teacher_loss(heads: Sequence[nn.Module], weights: Tensor, z: Tensor, y: Tensor) -> Tensor:
    """L_teach = sum_k (1/B) sum_i alpha_k^{y_i} CE(h_k(z_i), y_i).

    ``weights`` (C, K) from :func:`label_weights`, z (B, latent), y (B,). By
    convexity this upper-bounds the CE of the label-weighted ensemble.
    """
    w = weights.to(z.device)[y]  # (B, K)
    total = z.new_zeros(())
    for k, head in enumerate(heads):
        total = total + (F.cross_entropy(head(z), y, reduction="none") * w[:, k]).mean()
    return total


def ensemble_logits(heads: Sequence[nn.Module], weights: Tensor, z: Tensor, y: Tensor) -> Tensor:
    """sum_k alpha_k^{y_i} h_k(z_i): (B, C) logits of the label-weighted ensemble."""
    w = weights.to(z.device)[y]  # (B, K)
    return sum((head(z) * w[:, k : k + 1] for k, head in enumerate(heads)), z.new_zeros(()))


def student_loss(
    heads: Sequence[nn.Module], weights: Tensor, student: nn.Module, z: Tensor, y: Tensor
) -> Tensor:
    """L_stu = KL(softmax(ensemble) || softmax(h_server(z))), averaged over elements.

    The official adversarial term (``F.kl_div`` with its default element-wise
    mean); the generator *maximises* it when its weight is positive.
    """
    teacher = F.softmax(ensemble_logits(heads, weights, z, y), dim=1)  # (B, C)
    return F.kl_div(F.log_softmax(student(z), dim=1), teacher, reduction="mean")


def frozen_heads(template: nn.Module, states: Sequence[dict[str, Tensor]]) -> list[nn.Module]:
    """One frozen, eval-mode copy of ``template`` per state dict (the clients' heads)."""
    heads = []
    for state in states:
        head = copy.deepcopy(template)
        head.load_state_dict(state)
        head.eval().requires_grad_(False)
        heads.append(head)
    return heads


def head_state(model_state: dict[str, Tensor], prefix: str = "head.") -> dict[str, Tensor]:
    """The ``head`` entries of a full model state dict, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


@dataclass(frozen=True, slots=True)
class GeneratorLosses:
    """Mean losses over one round's generator steps (already weighted)."""

    teacher: float
    diversity: float
    student: float


@dataclass(frozen=True, slots=True)
class GeneratorPlan:
    """One round of generator training; docs/strategies/fedgen.md (Generator objective)."""

    steps: int  # Adam steps per round [50]
    batch_size: int  # B_g [32]
    noise: NoiseKind  # [gaussian] (official: uniform)
    teacher_weight: float  # alpha_e [1]
    diversity_weight: float  # eta_e [1]
    student_weight: float  # beta_e [0]: the adversarial student term is off


def train_generator(
    generator: LatentGenerator,
    optimizer: torch.optim.Optimizer,
    heads: Sequence[nn.Module],
    weights: Tensor,
    qualified: Sequence[int],
    plan: GeneratorPlan,
    gen: torch.Generator,
    student: nn.Module | None = None,
) -> GeneratorLosses:
    """Run ``plan.steps`` optimiser steps of L_G = a_e L_teach + e_e L_div - b_e L_stu.

    The generator trains in train mode (its BatchNorm statistics come from these
    batches, as officially); heads and student stay frozen in eval mode.
    """
    device = next(generator.parameters()).device
    generator.train()
    sums = torch.zeros(3, dtype=torch.float64)
    for _ in range(plan.steps):
        optimizer.zero_grad(set_to_none=True)
        y = sample_labels(qualified, plan.batch_size, gen, device)  # (B_g,)
        eps = sample_noise(plan.batch_size, generator.noise_dim, plan.noise, gen, device)
        z = generator(eps, y)  # (B_g, latent)
        teach = plan.teacher_weight * teacher_loss(heads, weights, z, y)
        div = plan.diversity_weight * diversity_loss(eps, z)
        loss = teach + div
        stu = z.new_zeros(())
        if student is not None and plan.student_weight > 0:
            stu = plan.student_weight * student_loss(heads, weights, student, z, y)
            loss = loss - stu
        loss.backward()
        optimizer.step()
        sums += torch.tensor([teach.item(), div.item(), stu.item()], dtype=torch.float64)
    mean = (sums / max(plan.steps, 1)).tolist()
    return GeneratorLosses(teacher=mean[0], diversity=mean[1], student=mean[2])


def regularization_weight(initial: float, decay: float, floor: float, t: int) -> float:
    """alpha_t = max(floor, alpha_0 * decay^t), t = 0 for the first round (official)."""
    return max(floor, initial * decay**t)


#: The client step the official alpha0 = beta0 = 10 were tuned for: plain SGD, lr 0.01.
OFFICIAL_STEP = 0.01


def step_scale(optimizer: str, lr: float, momentum: float) -> float:
    """The factor that keeps alpha_t and beta_t at the official strength per unit of step.

    The regulariser's gradients are those of a CE and a KL on the same logits, so
    alpha_t and beta_t multiply the step the regulariser takes. The official values
    were tuned with SGD at lr 0.01 without momentum (effective step 0.01); with SGD
    the effective step is ``lr / (1 - momentum)`` (0.5 at the app's default lr 0.05,
    momentum 0.9), where alpha_t = 10 steps 500x further than the official client on
    generated latents and diverges. Returns ``min(1, OFFICIAL_STEP / step)``: 1 at the
    official setting, 0.02 at the app's default. Adam normalises its step; its ``lr``
    is the step. docs/strategies/fedgen.md (Stability at other client settings).
    """
    step = lr / (1.0 - momentum) if optimizer == "sgd" else lr
    return min(1.0, OFFICIAL_STEP / step)


@dataclass(frozen=True, slots=True)
class RegularizerRound:
    """What a FedGen ``train`` message tells a client.

    docs/strategies/fedgen.md (Round structure and wire; Client objective).
    """

    generator: dict[str, Tensor]  # G_w's state dict, BatchNorm buffers included
    alpha: float  # alpha_t, weight of the CE on generated latents
    beta: float  # beta_t, weight of the latent KL term
    labels: tuple[int, ...]  # the available labels y_hat is drawn from
