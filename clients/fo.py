"""First-order local training (SGD or Adam on autograd gradients).

FedProx (Li et al., MLSys 2020, arXiv 1812.06127): when the plan carries
``proximal_mu > 0`` the client minimises CE + mu/2 * ||w - w_global||^2, with
w_global the weights received this round (Flower's FedProx client contract).
``max_grad_norm > 0`` clips the gradient norm before each step (FedVTC's
classifier steps); ``lr_schedule = "cosine"`` anneals the rate over all steps of
the update (FedZGE's local training: per step, the official code per epoch, same
end points).
"""

from __future__ import annotations

import torch
from torch import Tensor

from clients.base import FitPlan, FitStats, LossFn, cross_entropy_loss, measured
from fedapp.task.data import Arrays
from fedapp.task.metering import Meter
from fedapp.task.models import SplitModel


def make_optimizer(params: list[torch.nn.Parameter], plan: FitPlan) -> torch.optim.Optimizer:
    if plan.optimizer == "adam":
        return torch.optim.Adam(params, lr=plan.lr, weight_decay=plan.weight_decay)
    return torch.optim.SGD(
        params, lr=plan.lr, momentum=plan.momentum, weight_decay=plan.weight_decay
    )


def _schedule(
    optimizer: torch.optim.Optimizer, plan: FitPlan, num_examples: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The within-update learning-rate schedule (``None``: constant)."""
    if plan.lr_schedule == "constant":
        return None
    steps = plan.local_steps or plan.local_epochs * -(-num_examples // plan.batch_size)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))


class FirstOrderTrainer:
    """Backpropagation: one forward and one backward pass per minibatch."""

    def fit(
        self,
        model: SplitModel,
        data: Arrays,
        plan: FitPlan,
        device: torch.device,
        loss_fn: LossFn = cross_entropy_loss,
    ) -> FitStats:
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in params] if plan.proximal_mu > 0 else []
        optimizer = make_optimizer(params, plan)
        schedule = _schedule(optimizer, plan, len(data))
        meter = Meter(device)

        def step(x: Tensor, y: Tensor) -> float:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, x, y)
            value = float(loss.detach())
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * plan.proximal_mu * prox
            loss.backward()
            if plan.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, plan.max_grad_norm)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            meter.forward_passes += 1
            meter.backward_passes += 1
            return value

        return measured(data, plan, device, step, meter)
