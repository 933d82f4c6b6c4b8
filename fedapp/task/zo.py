"""Zeroth-order building blocks shared by every ZO method (docs/zeroth-order.md).

Parameter perturbation (MeZO, Malladi et al., NeurIPS 2023, arXiv 2305.17333;
used by the ``zo`` trainer, ``zo-seed`` and HERON-SFL) and input perturbation
(FedZGE, Ma, Wang, Zhang, AAAI 2025, arXiv 2503.06028) are implemented once here.

- A direction is never stored: it is regenerated from its seed on the device the
  tensors live on, by the counter-based generator of
  :mod:`fedapp.task.directions`, over the canonical (named, trainable) parameter
  order. One seed gives the same bits on every device, so replicas on CPU and
  CUDA rebuild the same model, and the model is only ever perturbed in place.
- Families (docs/zeroth-order.md (Estimators)): ``gaussian`` v = z (z = z_int/√21845: mean 0,
  variance 1, Irwin-Hall), c = 1; ``sphere`` v = z / ||z|| (norm taken jointly
  over all tensors, exact), c = d.
- A step is fully described by its ``(seed, projected gradient)`` pairs, so the
  local update, the server's aggregate update and replay all go through
  :func:`sgd_step_`, one fused in-place pass per direction: no estimate buffer.

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

from fedapp.task import directions
from fedapp.task.seeding import derive_seed

Direction = Literal["gaussian", "sphere"]
Estimator = Literal["central", "forward"]


def num_params(params: Sequence[Tensor]) -> int:
    """d: the trainable dimension."""
    return sum(p.numel() for p in params)


def direction_constant(direction: Direction, dim: int) -> float:
    """c of docs/zeroth-order.md (Estimators): 1 for ``gaussian``, d for ``sphere`` (unbiased for the ball-smoothed loss)."""
    return float(dim) if direction == "sphere" else 1.0


@torch.no_grad()
def direction_norm(params: Sequence[Tensor], seed: int) -> float:
    """||z(seed)|| over all tensors (≈ √d), from the exact integer Σ z_int² (cached per seed)."""
    device = params[0].device if params else torch.device("cpu")
    return math.sqrt(directions.square_norm(seed, num_params(params), device)) / directions.SIGMA


def _integer_scale(
    params: Sequence[Tensor], seed: int, direction: Direction, norm: float | None
) -> float:
    """The divisor that turns z_int(seed) into v(seed): √21845 (gaussian) or ||z_int|| (sphere)."""
    if direction != "sphere":
        return directions.SIGMA
    if norm is not None:
        return norm * directions.SIGMA
    device = params[0].device
    return math.sqrt(directions.square_norm(seed, num_params(params), device))


@torch.no_grad()
def perturb_(
    params: Sequence[Tensor], seed: int, scale: float | Sequence[float],
    direction: Direction = "gaussian", norm: float | None = None,
) -> None:
    """θ ← θ + scale·v(seed), in place; ``sphere`` divides by ``norm`` (computed if not given).

    Several scales share one regeneration and give the bits of successive calls.
    """
    if not params:
        return
    k = _integer_scale(params, seed, direction, norm)
    scales = [scale] if isinstance(scale, float | int) else scale
    directions.add_direction_(params, seed, [s / k for s in scales])


@dataclass(frozen=True, slots=True)
class Pending:
    """θ currently holds θ + scale·v(seed): a perturbation left for the update to undo."""

    seed: int
    scale: float


def _coefficients(
    params: Sequence[Tensor], seeds: Sequence[int], grads: Sequence[float], lr: float,
    direction: Direction,
) -> list[float]:
    """−lr·(c/P)·g_p on v(seed_p), per seed (P = len(seeds))."""
    if len(seeds) != len(grads):
        raise ValueError(f"{len(seeds)} seeds but {len(grads)} projected gradients")
    coeff = direction_constant(direction, num_params(params)) / max(len(seeds), 1)
    return [-lr * coeff * g for g in grads]


@torch.no_grad()
def estimate_tensors(
    params: Sequence[Tensor], seeds: Sequence[int], grads: Sequence[float],
    direction: Direction = "gaussian", norms: Sequence[float] | None = None,
    pending: Pending | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(param, ĝ_param)`` with ĝ = (c/P) Σ_p g_p v(seed_p), one tensor at a time.

    The whole estimate is never materialised (memory: one tensor-sized buffer and
    one chunk, docs/zeroth-order.md (Seeded in-place perturbation (MeZO trick))). With ``pending``, each tensor is first restored from
    that perturbation, reusing the same generated chunks, before it is yielded.
    """
    if not params:
        return
    layout = directions.Layout(params)
    gen = directions.chunk_generator(layout.device, layout.chunk)
    given = list(norms) if norms is not None else [None] * len(seeds)
    scales = [_integer_scale(params, s, direction, n) for s, n in zip(seeds, given, strict=True)]
    weights = [-c / k for c, k in zip(_coefficients(params, seeds, grads, 1.0, direction),
                                       scales, strict=True)]
    undo = None
    if pending is not None:
        undo = -pending.scale / _integer_scale(params, pending.seed, direction, None)
    for i, p in enumerate(params):
        flat = p.view(-1)
        if undo is not None:
            directions.add_tensor_normals_(flat, pending.seed, layout, i, undo, gen)  # type: ignore[union-attr]
        est = torch.zeros_like(flat)
        for seed, w in zip(seeds, weights, strict=True):
            directions.add_tensor_normals_(est, seed, layout, i, w, gen)
        yield p, est.view_as(p)


@torch.no_grad()
def sgd_step_(
    params: Sequence[Tensor], seeds: Sequence[int], grads: Sequence[float], lr: float,
    direction: Direction = "gaussian", norms: Sequence[float] | None = None,
    pending: Pending | None = None,
) -> None:
    """ZO-SGD: θ ← θ − lr·ĝ, one in-place pass per direction (no estimate buffer).

    Local updates and replay both call this, so they agree exactly. ``pending``
    (a perturbation by the last seed still on θ) is undone in the same
    regeneration as that seed's update, with the bits of undo-then-update.
    """
    coeffs = _coefficients(params, seeds, grads, lr, direction)
    given = list(norms) if norms is not None else [None] * len(seeds)
    fuse = pending is not None and bool(seeds) and pending.seed == seeds[-1]
    if pending is not None and not fuse:
        perturb_(params, pending.seed, -pending.scale, direction)
    for i, (seed, c, norm) in enumerate(zip(seeds, coeffs, given, strict=True)):
        if fuse and i == len(seeds) - 1:
            perturb_(params, seed, [-pending.scale, c], direction, norm)  # type: ignore[union-attr]
        else:
            perturb_(params, seed, c, direction, norm)


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps using batch statistics but leaves its running ones alone.

    docs/zeroth-order.md (Consistency inside one estimate): every forward of one estimate sees the same BN mode; only the first
    (``central``) or clean (``forward``) forward may move the running statistics.
    In training mode a BN layer with ``track_running_stats = False`` normalises
    with batch statistics and touches neither its running statistics nor its
    batch counter, so switching the flag costs no tensor operation.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in bns]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in zip(bns, saved, strict=True):
            m.track_running_stats = flag


#: The minibatch loss at the current parameters, reduced in float64 (docs/zeroth-order.md (Consistency inside one estimate)).
LossAt = Callable[[], float]


@torch.no_grad()
def estimate_(
    loss_at: LossAt, params: Sequence[Tensor], seeds: Sequence[int], mu: float,
    estimator: Estimator = "central", direction: Direction = "gaussian",
    model: nn.Module | None = None, restore: bool = True,
) -> tuple[list[float], float, Pending | None]:
    """Two-point projected gradients g_p, one per seed (docs/zeroth-order.md (Estimators)).

    ``forward``: g_p = [L(θ+μv_p) − L(θ)]/μ (P+1 forwards); ``central``:
    g_p = [L(θ+μv_p) − L(θ−μv_p)]/(2μ) (2P forwards). With ``model``, only the
    clean (``forward``) or first (``central``) forward may update BatchNorm running
    statistics (:func:`frozen_bn_stats`). Returns the g_p, the loss at θ
    (``forward``: exact; ``central``: the mean of the first pair) and, with
    ``restore=False``, the last direction's perturbation left on θ for the update
    to undo in the same pass (:class:`Pending`; ``None`` when θ was restored).
    The in-place restore is not bitwise exact (θ+μz−2μz+μz); replicas stay
    consistent because they rebuild θ by replay, not by restoring.
    """
    def at(first: bool) -> float:
        if first or model is None:
            return loss_at()
        with frozen_bn_stats(model):
            return loss_at()

    norms = [direction_norm(params, s) if direction == "sphere" else None for s in seeds]
    grads: list[float] = []
    pending: Pending | None = None
    clean = at(True) if estimator == "forward" else math.nan
    for i, (seed, norm) in enumerate(zip(seeds, norms, strict=True)):
        last = i == len(seeds) - 1
        perturb_(params, seed, mu, direction, norm)
        plus = at(estimator == "central" and i == 0)
        if estimator == "forward":
            grads.append((plus - clean) / mu)
            if last and not restore:
                pending = Pending(seed, mu)
            else:
                perturb_(params, seed, -mu, direction, norm)
            continue
        perturb_(params, seed, -2 * mu, direction, norm)
        minus = at(False)
        grads.append((plus - minus) / (2 * mu))
        if last and not restore:
            pending = Pending(seed, -mu)
        else:
            perturb_(params, seed, mu, direction, norm)
        if i == 0:
            clean = 0.5 * (plus + minus)
    return grads, clean, pending


def projected_gradients(
    loss_at: LossAt, params: Sequence[Tensor], seeds: Sequence[int], mu: float,
    estimator: Estimator = "central", direction: Direction = "gaussian",
    model: nn.Module | None = None,
) -> tuple[list[float], float]:
    """:func:`estimate_` with θ restored after each direction: (g_p, loss at θ)."""
    grads, clean, _ = estimate_(loss_at, params, seeds, mu, estimator, direction, model)
    return grads, clean


def unit_directions(
    shape: Sequence[int], num_directions: int, seed: int, device: torch.device | str = "cpu"
) -> Tensor:
    """FedZGE's query directions: (q, N, *x) Gaussian-like, each sample's slice unit-normalised.

    Generated on ``device`` by :mod:`fedapp.task.directions` in (j, sample)
    order; each slice's norm comes from its exact integer Σ z_int², and the one
    division per element rounds the same everywhere, so a client given ``seed``
    rebuilds bit for bit the directions the server used, on any device
    (docs/strategies/fedzge.md (Project decisions) Z3).
    """
    n = num_directions * math.prod(shape)
    z = directions.normals(seed, 0, n, device).view(num_directions, shape[0], -1)  # (q, N, D)
    norms = z.square().sum(dim=2, keepdim=True, dtype=torch.float64).sqrt_()  # (q, N, 1), exact Σ
    return z.div_(norms.float()).view(num_directions, *shape)


def input_gradient_estimate(
    losses: Tensor, base_loss: Tensor | float, u: Tensor, eps: float
) -> Tensor:
    """FedZGE's ZO estimate of ∂L/∂x (docs/strategies/fedzge.md (Generator loss and ZO estimator)): (1/N) Σ_j (d/q)·[L(x_j) − L(x)]/ε · u_j.

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


# --- ZO-SGD steps as data: local updates, the server's aggregate and replay (docs/strategies/zo-seed.md (Client step)) ---


def trainable(model: nn.Module) -> list[Tensor]:
    """The canonical parameter order of every ZO method: named, trainable parameters."""
    return [p for _, p in model.named_parameters() if p.requires_grad]


def decay_mask(params: Sequence[Tensor]) -> list[bool]:
    """Which tensors take weight decay: weight matrices and kernels, never biases or norms (1-D)."""
    return [p.dim() > 1 for p in params]


def step_seeds(seed_base: int, step: int, num_directions: int, salt: int | None = None) -> list[int]:
    """The P perturbation seeds s_{t,h,p} of local step h (docs/strategies/zo-seed.md (Upload modes)).

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
    params: Sequence[Tensor], step: ZOStep, direction: Direction = "gaussian",
    pending: Pending | None = None,
) -> None:
    """Apply one :class:`ZOStep` in place; local training and replay share this function.

    ``pending`` (local training only): a perturbation still on θ, undone first,
    or in the update's own pass when there is no weight decay to apply between.
    """
    if pending is not None and (step.weight_decay or not step.seeds):
        perturb_(params, pending.seed, -pending.scale, direction)
        pending = None
    if step.weight_decay:
        factor = 1.0 - step.lr * step.weight_decay
        for p, decays in zip(params, decay_mask(params), strict=True):
            if decays:
                p.mul_(factor)  # replays exactly: a pure scaling, one rounding on any device
    if not step.seeds:
        return
    scale = step.lr * len(step.seeds) / step.num_directions  # sgd_step_ divides by len(seeds)
    sgd_step_(params, step.seeds, step.grads, scale, direction, pending=pending)


@torch.no_grad()
def replay_(
    params: Sequence[Tensor], steps: Iterable[ZOStep], direction: Direction = "gaussian"
) -> int:
    """θ ← Replay(θ, steps) in order (docs/strategies/zo-seed.md (Global model, catch-up, consistency)); returns the number of steps applied."""
    count = 0
    for step in steps:
        apply_step_(params, step, direction)
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class ZORound:
    """One round of the ``zo-seed`` history: the server's aggregate steps θ^t → θ^{t+1} (docs/strategies/zo-seed.md (Upload modes))."""

    round: int  # t
    seed_base: int  # the base seed handed out for round t
    steps: tuple[ZOStep, ...]  # H steps (none when no reply survived screening)


@torch.no_grad()
def replay_rounds_(
    params: Sequence[Tensor], rounds: Iterable[ZORound], synced: int,
    direction: Direction = "gaussian",
) -> int:
    """Catch a replica holding θ^synced up by replaying ``rounds`` (docs/strategies/zo-seed.md (Global model, catch-up, consistency)).

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
