"""Optimisers fed one ``(parameter, estimate)`` pair at a time (docs/zeroth-order.md (Seeded in-place perturbation (MeZO trick)), HERON-SFL H8).

They consume what :func:`fedapp.task.zo.estimate_tensors` yields, so a
zeroth-order estimate is never materialised whole. No Flower here: plain torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor


class TensorAdam:
    """Adam fed one ``(param, ĝ_param)`` pair at a time (docs/zeroth-order.md (Seeded in-place perturbation (MeZO trick)), HERON-SFL H8).

    Takes the pairs :func:`estimate_tensors` yields, so the ZO estimate is never
    materialised whole; the state is Adam's two moments per tensor, as in
    ``torch.optim.Adam`` (Kingma and Ba, 2015; no weight decay, no amsgrad).

    Parameters
    ----------
    params : sequence of Tensor
        The trainable tensors, in the canonical order the pairs arrive in.
    lr, betas, eps : float
        Adam's step size, moment decay rates and denominator guard.
    """

    def __init__(
        self, params: Sequence[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def state_tensors(self) -> list[Tensor]:
        """The optimizer's state (the two moments), for memory accounting."""
        return [*self.exp_avg, *self.exp_avg_sq]

    @torch.no_grad()
    def step_(self, pairs: Iterator[tuple[Tensor, Tensor]]) -> None:
        """θ ← θ − lr·m̂/(√v̂ + eps), tensor by tensor, for one estimate."""
        self.steps += 1
        b1, b2 = self.betas
        bias1, bias2 = 1 - b1**self.steps, 1 - b2**self.steps
        for i, (p, g) in enumerate(pairs):
            m, v = self.exp_avg[i], self.exp_avg_sq[i]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / bias2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bias1)


class TensorSGD:
    """Plain SGD fed one ``(param, ĝ_param)`` pair at a time: θ ← θ − lr·ĝ."""

    def __init__(self, params: Sequence[Tensor], lr: float) -> None:
        self.lr = lr

    def state_tensors(self) -> list[Tensor]:
        """SGD keeps no state."""
        return []

    @torch.no_grad()
    def step_(self, pairs: Iterator[tuple[Tensor, Tensor]]) -> None:
        for p, g in pairs:
            p.sub_(g, alpha=self.lr)
