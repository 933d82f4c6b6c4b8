"""Zeroth-order building blocks shared by every ZO method (docs/zeroth-order.md).

Parameter perturbation (MeZO, Malladi et al., NeurIPS 2023, arXiv 2305.17333;
used by the ``zo`` trainer, ``zo-seed`` and HERON-SFL) and input perturbation
(FedZGE, Ma, Wang, Zhang, AAAI 2025, arXiv 2503.06028) are implemented once here.

- A direction is never stored: it is regenerated from its seed by a private CPU
  ``torch.Generator`` in float32, tensor by tensor in the canonical (named,
  trainable) parameter order, so one seed gives the same direction on every
  machine and the model is only ever perturbed in place.
- Families (docs/zeroth-order.md (Estimators)): ``gaussian`` v = z ~ N(0, I), c = 1; ``sphere``
  v = z / ||z|| (norm taken jointly over all tensors), c = d.
- A step is fully described by its ``(seed, projected gradient)`` pairs, so the
  local update, the server's aggregate update and replay all go through
  :func:`estimate_tensors`.

No Flower here: plain torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from fedapp.task.seeding import derive_seed

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
    """c: 1 for ``gaussian``, d for ``sphere`` (unbiased for the ball-smoothed loss).

    docs/zeroth-order.md (Estimators).
    """
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

    The P generators advance in lock-step through the tensors, so the whole estimate is never
    materialised (memory: one tensor-sized buffer, docs/zeroth-order.md (Seeded in-place
    perturbation)).
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

    docs/zeroth-order.md (Consistency inside one estimate): every forward of one estimate sees
    the same BN mode; only the first (``central``) or clean (``forward``) forward may move the
    running statistics.
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


#: The minibatch loss at the current parameters, reduced in float64 (docs/zeroth-order.md
#: (Consistency inside one estimate)).
LossAt = Callable[[], float]


@torch.no_grad()
def projected_gradients(
    loss_at: LossAt, params: Sequence[Tensor], seeds: Sequence[int], mu: float,
    estimator: Estimator = "central", direction: Direction = "gaussian",
    model: nn.Module | None = None,
) -> tuple[list[float], float]:
    """Two-point projected gradients g_p, one per seed; θ is restored after each.

    docs/zeroth-order.md (Estimators).

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

    Drawn on the CPU in float32 from a private generator in (j, sample) order, so a client given
    ``seed`` rebuilds exactly the directions the server used (decision Z3,
    docs/strategies/fedzge.md).
    """
    gen = _generator(seed)
    u = torch.randn((num_directions, *shape), generator=gen, dtype=torch.float32)  # (q, N, *x)
    flat = u.flatten(2)  # (q, N, D)
    return (flat / flat.norm(dim=2, keepdim=True)).view_as(u)


def input_gradient_estimate(
    losses: Tensor, base_loss: Tensor | float, u: Tensor, eps: float
) -> Tensor:
    """FedZGE's ZO estimate of ∂L/∂x: (1/N) Σ_j (d/q)·[L(x_j) − L(x)]/ε · u_j.

    docs/strategies/fedzge.md (Generator loss and ZO estimator).

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


# --- ZO-SGD steps as data: local updates, the server's aggregate and replay ---
# docs/strategies/zo-seed.md (Client step; Upload modes; Global model, catch-up, consistency)


def trainable(model: nn.Module) -> list[Tensor]:
    """The canonical parameter order of every ZO method: named, trainable parameters."""
    return [p for _, p in model.named_parameters() if p.requires_grad]


def decay_mask(params: Sequence[Tensor]) -> list[bool]:
    """Which tensors take weight decay: weight matrices and kernels, never biases or norms (1-D)."""
    return [p.dim() > 1 for p in params]


def step_seeds(seed_base: int, step: int, num_directions: int, salt: int | None = None) -> list[int]:
    """The P perturbation seeds s_{t,h,p} of local step h.

    docs/strategies/zo-seed.md (Upload modes).

    ``seed_base`` is the round's base seed (the server hands it out), so with
    ``salt=None`` every client uses the same seeds (``zo.seed-source = shared``);
    a client-specific ``salt`` (its partition id) gives ``client`` seeds.
    """
    salts = () if salt is None else (salt,)
    return [derive_seed(int(seed_base), step, p, *salts) for p in range(num_directions)]


@dataclass(frozen=True, slots=True)
class ZOStep:
    """One ZO-SGD step, fully described by data (docs/strategies/zo-seed.md (Client step)).

    θ ← (1 − lr·λ)·θ on decayed tensors, then θ ← θ − lr·(c/P)·Σ_i g_i·v(s_i).
    ``len(seeds)`` is P for one client's step, or a multiple of P when the
    server stacks several clients' pre-weighted pairs (``seed-source = client``).
    """

    seeds: tuple[int, ...]
    grads: tuple[float, ...]
    lr: float
    num_directions: int  # P, the estimator's divisor
    weight_decay: float = 0.0  # λ


@torch.no_grad()
def apply_step_(
    params: Sequence[Tensor], step: ZOStep, direction: Direction = "gaussian"
) -> None:
    """Apply one :class:`ZOStep` in place; local training and replay share this function."""
    if step.weight_decay:
        for p, decays in zip(params, decay_mask(params), strict=True):
            if decays:
                p.mul_(1.0 - step.lr * step.weight_decay)  # replays exactly: a pure scaling
    if not step.seeds:
        return
    scale = step.lr * len(step.seeds) / step.num_directions  # sgd_step_ divides by len(seeds)
    sgd_step_(params, step.seeds, step.grads, scale, direction)


@torch.no_grad()
def replay_(
    params: Sequence[Tensor], steps: Iterable[ZOStep], direction: Direction = "gaussian"
) -> int:
    """θ ← Replay(θ, steps) in order; returns the number of steps applied.

    docs/strategies/zo-seed.md (Global model, catch-up, consistency).
    """
    count = 0
    for step in steps:
        apply_step_(params, step, direction)
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class ZORound:
    """One round of the ``zo-seed`` history: the server's aggregate steps θ^t → θ^{t+1}.

    docs/strategies/zo-seed.md (Upload modes).
    """

    round: int  # t
    seed_base: int  # the base seed handed out for round t
    steps: tuple[ZOStep, ...]  # H steps (none when no reply survived screening)


@torch.no_grad()
def replay_rounds_(
    params: Sequence[Tensor], rounds: Iterable[ZORound], synced: int,
    direction: Direction = "gaussian",
) -> int:
    """Catch a replica holding θ^synced up by replaying ``rounds``.

    docs/strategies/zo-seed.md (Global model, catch-up, consistency).

    Rounds before ``synced`` are already in the replica and are skipped; the rest
    must follow on without a gap. Returns the round whose model the replica now holds.
    """
    for entry in rounds:
        if entry.round < synced:
            continue
        if entry.round != synced:
            raise ValueError(f"replica holds round {synced} but the history resumes at {entry.round}")
        replay_(params, entry.steps, direction)
        synced += 1
    return synced
# --- optimisers fed one (parameter, estimate) pair at a time (HERON-SFL) ---


class TensorAdam:
    """Adam fed one ``(param, ĝ_param)`` pair at a time (HERON-SFL's client optimizer).

    docs/zeroth-order.md (Seeded in-place perturbation); decision H8,
    docs/strategies/heron-sfl.md.

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
