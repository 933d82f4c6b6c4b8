"""Forward-only zeroth-order local training (trainer ``zo``).

MeZO (Malladi et al., NeurIPS 2023, arXiv 2305.17333): the model is perturbed
in place along a direction regenerated from a seed on the training device
(:mod:`fedapp.task.directions`: never the global RNG, never a stored noise
tensor), the loss is read at θ ± μv, and one more regeneration both undoes the
last perturbation and applies the update (three regenerations per ``central``
step). No autograd graph is ever built: every forward runs under
``torch.inference_mode`` and no parameter ever gets a ``.grad`` buffer, so memory
stays at inference level (plus one parameter copy with ``zo.exact-restore``,
``zo.momentum`` or FedProx).

docs/zeroth-order.md and docs/strategies/zo-seed.md (Client step): ``central`` (2P forwards) or
``forward`` (P+1 forwards) two-point estimator, ``gaussian`` or ``sphere`` directions, P
directions per step, smoothing μ, ZO-SGD with optional momentum and weight decay (not on biases
and norms). BatchNorm: every forward of one estimate uses batch statistics of the same
minibatch; only the first (``central``) or clean (``forward``) forward moves the running
statistics (:func:`fedapp.task.zo.frozen_bn_stats`).

Every step is recorded as a :class:`fedapp.task.zo.ZOStep` (seeds and
projected-gradient scalars), which is all the ``zo-seed`` strategy uploads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clients.base import FitPlan, FitStats, LossFn, cross_entropy_loss, measured
from fedapp.task import zo
from fedapp.task.data import Arrays
from fedapp.task.metering import Meter
from fedapp.task.models import SplitModel


@dataclass(frozen=True, slots=True, kw_only=True)
class ZOPlan(FitPlan):
    """A :class:`FitPlan` plus the zeroth-order settings (``zo.*``) and this round's seeds.

    ``lr``, ``local_steps``, ``momentum`` and ``weight_decay`` of the base plan
    hold the ``zo.*`` values; ``local_epochs`` and ``optimizer`` are unused.
    """

    num_directions: int  # P
    mu: float  # μ
    estimator: zo.Estimator
    direction: zo.Direction
    exact_restore: bool
    seed_base: int  # the round's base seed; step h uses zo.step_seeds(seed_base, h, P, salt)
    seed_salt: int | None  # None: shared seeds; the partition id: client seeds


def float64_cross_entropy(model: SplitModel, x: Tensor, y: Tensor) -> Tensor:
    """Mean CE with the log-softmax and the batch reduction in float64.

    docs/zeroth-order.md (Consistency inside one estimate).

    Loss differences of a two-point estimate are tiny; reducing in float32 would
    bury them in rounding noise.
    """
    return F.cross_entropy(model(x).double(), y)  # (B, C) float64 -> scalar


#: The ZO trainer evaluates these objectives through a float64 twin.
_PRECISE: dict[LossFn, LossFn] = {cross_entropy_loss: float64_cross_entropy}


class ZerothOrderTrainer:
    """Forward-only ZO-SGD; the stats it returns hold the ``(seeds, scalars)`` of every step."""

    def fit(
        self,
        model: SplitModel,
        data: Arrays,
        plan: FitPlan,
        device: torch.device,
        loss_fn: LossFn = cross_entropy_loss,
    ) -> FitStats:
        if not isinstance(plan, ZOPlan):
            raise TypeError("the zo trainer needs a ZOPlan (clients.plans.fit_plan builds one)")
        objective = _PRECISE.get(loss_fn, loss_fn)
        model.to(device).train()
        params = zo.trainable(model)
        anchor = [p.detach().clone() for p in params] if plan.proximal_mu > 0 else []
        velocity = [torch.zeros_like(p) for p in params] if plan.momentum > 0 else []
        meter = Meter(device)
        steps: list[zo.ZOStep] = []
        batch: list[Tensor] = []

        def loss_at() -> float:
            meter.forward_passes += 1
            with torch.inference_mode():
                loss = objective(model, batch[0], batch[1]).double()
                if anchor:
                    prox = sum(
                        (p.double() - a.double()).square().sum()
                        for p, a in zip(params, anchor, strict=True)
                    )
                    loss = loss + 0.5 * plan.proximal_mu * prox
                return float(loss)

        def step(x: Tensor, y: Tensor) -> float:
            batch[:] = [x, y]
            seeds = zo.step_seeds(plan.seed_base, len(steps), plan.num_directions, plan.seed_salt)
            snapshot = [p.detach().clone() for p in params] if plan.exact_restore else []
            # the last perturbation is undone in the update's own pass (or by the snapshot)
            grads, loss, pending = zo.estimate_(
                loss_at, params, seeds, plan.mu, plan.estimator, plan.direction, model,
                restore=False,
            )
            if snapshot:
                with torch.no_grad():
                    for p, s in zip(params, snapshot, strict=True):
                        p.copy_(s)
                pending = None
            # the uploaded scalars are float32; the update uses exactly what is uploaded
            record = zo.ZOStep(
                seeds=tuple(seeds),
                grads=tuple(float(np.float32(g)) for g in grads),
                lr=plan.lr,
                num_directions=plan.num_directions,
                weight_decay=plan.weight_decay,
            )
            steps.append(record)
            if velocity:
                _momentum_step_(params, velocity, record, plan.momentum, plan.direction, pending)
            else:
                zo.apply_step_(params, record, plan.direction, pending)
            return loss

        return replace(measured(data, plan, device, step, meter), zo_steps=tuple(steps))


@torch.no_grad()
def _momentum_step_(
    params: list[Tensor], velocity: list[Tensor], record: zo.ZOStep,
    momentum: float, direction: zo.Direction, pending: zo.Pending | None,
) -> None:
    """Heavy ball on the ZO estimate: m ← βm + ĝ; θ ← (1 − ηλ)θ − ηm (delta uploads only).

    ``pending`` (the last perturbation) is undone tensor by tensor before the update.
    """
    decays = zo.decay_mask(params)
    estimates = zo.estimate_tensors(params, record.seeds, record.grads, direction, pending=pending)
    for (p, est), m, d in zip(estimates, velocity, decays, strict=True):
        if d and record.weight_decay:
            p.mul_(1.0 - record.lr * record.weight_decay)
        m.mul_(momentum).add_(est)
        p.sub_(m, alpha=record.lr)
