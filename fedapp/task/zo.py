"""Zeroth-order building blocks shared by every ZO method (SPEC §1).

Parameter perturbation (MeZO, Malladi et al., NeurIPS 2023, arXiv 2305.17333;
used by the ``zo`` trainer, ``zo-seed`` and HERON-SFL) and input perturbation
(FedZGE, Ma, Wang, Zhang, AAAI 2025, arXiv 2503.06028) are implemented once here.

- A direction is never stored: it is regenerated from its seed by a private CPU
  ``torch.Generator`` in float32, tensor by tensor in the canonical (named,
  trainable) parameter order, so one seed gives the same direction on every
  machine and the model is only ever perturbed in place.
- Families (SPEC §1.1): ``gaussian`` v = z ~ N(0, I), c = 1; ``sphere``
  v = z / ||z|| (norm taken jointly over all tensors), c = d.
- A step is fully described by its ``(seed, projected gradient)`` pairs, so the
  local update, the server's aggregate update and replay all go through
  :func:`estimate_tensors`.

No Flower here: plain torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

Direction = Literal["gaussian", "sphere"]
Estimator = Literal["central", "forward"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _draw(gen: torch.Generator, like: Tensor) -> Tensor:
    """z ~ N(0, I) shaped like ``like``: drawn on the CPU in float32, moved to its device."""
    z = torch.randn(like.shape, generator=gen, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


def num_params(params: Sequence[Tensor]) -> int:
    """d: the trainable dimension."""
    return sum(p.numel() for p in params)


def direction_constant(direction: Direction, dim: int) -> float:
    """c of SPEC §1.1: 1 for ``gaussian``, d for ``sphere`` (unbiased for the ball-smoothed loss)."""
    return float(dim) if direction == "sphere" else 1.0


@torch.no_grad()
def direction_norm(params: Sequence[Tensor], seed: int) -> float:
    """||z(seed)|| over all tensors, from one generation pass that only accumulates Σz²."""
    gen, total = _generator(seed), 0.0
    for p in params:
        total += float(torch.randn(p.shape, generator=gen, dtype=torch.float32).double().square().sum())
    return math.sqrt(total)


@torch.no_grad()
def perturb_(
    params: Sequence[Tensor], seed: int, scale: float, direction: Direction = "gaussian",
    norm: float | None = None,
) -> None:
    """θ ← θ + scale·v(seed), in place; ``sphere`` divides by ``norm`` (computed if not given)."""
    if direction == "sphere":
        scale = scale / (norm if norm is not None else direction_norm(params, seed))
    gen = _generator(seed)
    for p in params:
        p.add_(_draw(gen, p), alpha=scale)


@torch.no_grad()
def estimate_tensors(
    params: Sequence[Tensor], seeds: Sequence[int], grads: Sequence[float],
    direction: Direction = "gaussian", norms: Sequence[float] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(param, ĝ_param)`` with ĝ = (c/P) Σ_p g_p v(seed_p), one tensor at a time.

    The P generators advance in lock-step through the tensors, so the whole
    estimate is never materialised (memory: one tensor-sized buffer, SPEC §1.2).
    """
    if len(seeds) != len(grads):
        raise ValueError(f"{len(seeds)} seeds but {len(grads)} projected gradients")
    coeff = direction_constant(direction, num_params(params)) / max(len(seeds), 1)
    if direction == "sphere":
        norms = norms if norms is not None else [direction_norm(params, s) for s in seeds]
        weights = [g / n for g, n in zip(grads, norms, strict=True)]
    else:
        weights = list(grads)
    gens = [_generator(s) for s in seeds]
    for p in params:
        est = torch.zeros_like(p)
        for gen, w in zip(gens, weights, strict=True):
            est.add_(_draw(gen, p), alpha=w)
        yield p, est.mul_(coeff)


@torch.no_grad()
def sgd_step_(
    params: Sequence[Tensor], seeds: Sequence[int], grads: Sequence[float], lr: float,
    direction: Direction = "gaussian", norms: Sequence[float] | None = None,
) -> None:
    """ZO-SGD: θ ← θ − lr·ĝ. Local updates and replay both call this, so they agree exactly."""
    for p, est in estimate_tensors(params, seeds, grads, direction, norms):
        p.sub_(est, alpha=lr)


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps using batch statistics but stops updating its running ones (momentum 0).

    SPEC §1.3: every forward of one estimate sees the same BN mode; only the first
    (``central``) or clean (``forward``) forward may move the running statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked) for m in bns]
    tracked = [t.clone() if t is not None else None for _, t in saved]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, buf), count in zip(bns, saved, tracked, strict=True):
            m.momentum = momentum
            if buf is not None and count is not None:
                buf.copy_(count)


#: The minibatch loss at the current parameters, reduced in float64 (SPEC §1.3).
LossAt = Callable[[], float]


@torch.no_grad()
def projected_gradients(
    loss_at: LossAt, params: Sequence[Tensor], seeds: Sequence[int], mu: float,
    estimator: Estimator = "central", direction: Direction = "gaussian",
    model: nn.Module | None = None,
) -> tuple[list[float], float]:
    """Two-point projected gradients g_p, one per seed (SPEC §1.1); θ is restored after each.

    ``forward``: g_p = [L(θ+μv_p) − L(θ)]/μ (P+1 forwards); ``central``:
    g_p = [L(θ+μv_p) − L(θ−μv_p)]/(2μ) (2P forwards). With ``model``, only the
    clean (``forward``) or first (``central``) forward may update BatchNorm running
    statistics (:func:`frozen_bn_stats`). Returns the g_p and the loss at θ
    (``forward``: exact; ``central``: the mean of the first pair).
    The in-place restore is not bitwise exact (θ+μz−2μz+μz); replicas stay
    consistent because they rebuild θ by replay, not by restoring.
    """
    def at(first: bool) -> float:
        if first or model is None:
            return loss_at()
        with frozen_bn_stats(model):
            return loss_at()

    norms = [direction_norm(params, s) if direction == "sphere" else 1.0 for s in seeds]
    grads: list[float] = []
    clean = at(True) if estimator == "forward" else math.nan
    for i, (seed, norm) in enumerate(zip(seeds, norms, strict=True)):
        perturb_(params, seed, mu, direction, norm)
        plus = at(estimator == "central" and i == 0)
        if estimator == "forward":
            perturb_(params, seed, -mu, direction, norm)
            grads.append((plus - clean) / mu)
            continue
        perturb_(params, seed, -2 * mu, direction, norm)
        minus = at(False)
        perturb_(params, seed, mu, direction, norm)
        grads.append((plus - minus) / (2 * mu))
        if i == 0:
            clean = 0.5 * (plus + minus)
    return grads, clean


def unit_directions(shape: Sequence[int], num_directions: int, seed: int) -> Tensor:
    """FedZGE's query directions: (q, N, *x) Gaussian, each sample's slice unit-normalised.

    Drawn on the CPU in float32 from a private generator in (j, sample) order, so a
    client given ``seed`` rebuilds exactly the directions the server used (SPEC §3.6 Z3).
    """
    gen = _generator(seed)
    u = torch.randn((num_directions, *shape), generator=gen, dtype=torch.float32)  # (q, N, *x)
    flat = u.flatten(2)  # (q, N, D)
    return (flat / flat.norm(dim=2, keepdim=True)).view_as(u)


def input_gradient_estimate(
    losses: Tensor, base_loss: Tensor | float, u: Tensor, eps: float
) -> Tensor:
    """FedZGE's ZO estimate of ∂L/∂x (SPEC §3.3): (1/N) Σ_j (d/q)·[L(x_j) − L(x)]/ε · u_j.

    ``losses`` (q,) batch-level losses at x_j = x + ε·u_j; ``u`` (q, N, *x); d = dim of one sample.
    Losses (q, N) with ``base_loss`` (N,) give every sample its own coefficient: sample i's
    direction u_{j,i} is scaled by its own loss difference (a variance reduction when the
    loss separates over samples). Returns (N, *x).
    """
    q, n = u.shape[0], u.shape[1]
    d = u[0, 0].numel()
    if losses.dim() == 2:
        base = torch.as_tensor(base_loss, dtype=torch.float64)  # (N,)
        per = (losses.to(torch.float64) - base) / eps * (d / q) / n  # (q, N)
        return torch.einsum("qn,qn...->n...", per.to(u.dtype), u)
    coeff = (losses.to(torch.float64) - float(base_loss)) / eps * (d / q) / n  # (q,)
    return torch.einsum("q,q...->...", coeff.to(u.dtype), u)
