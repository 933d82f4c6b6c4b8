"""What every trainer shares: the node description, the local plan, the local loop.

Trainers differ only in how one minibatch step updates the model (first-order
autograd, forward-only zeroth-order, split), in the spirit of fedjax's gradient
oracles: :func:`local_loop` drives any ``step`` function over the plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from fedapp.task.data import Arrays, batches
from fedapp.task.metering import Meter
from fedapp.task.models import SplitModel
from fedapp.task.seeding import torch_generator
from fedapp.task.zo import ZOStep


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Who this node is: resolved from node-config first, then the run config."""

    partition_id: int
    num_partitions: int
    trainer: str
    model: str
    device: torch.device
    data_path: str | None


@dataclass(frozen=True, slots=True)
class FitPlan:
    """One local update as the server and run config ask for it."""

    server_round: int
    lr: float
    local_epochs: int
    local_steps: int  # > 0 replaces epochs
    batch_size: int
    optimizer: str
    momentum: float
    weight_decay: float
    proximal_mu: float  # FedProx: add mu/2 * ||w - w_global||^2 (0 disables)
    data_seed: int  # order of minibatches
    max_grad_norm: float = 0.0  # first-order: clip the gradient norm (FedVTC); 0 disables
    lr_schedule: Literal["constant", "cosine"] = "constant"  # within the update (FedZGE: cosine)


@dataclass(frozen=True, slots=True)
class FitStats:
    """What a local update reports (the ``metrics`` of a train reply)."""

    num_examples: int
    train_loss: float  # mean minibatch loss over the update
    forward_passes: int
    backward_passes: int
    peak_mem_mb: float
    seconds: float
    zo_steps: tuple[ZOStep, ...] = ()  # zeroth-order: the (seeds, scalars) of every step


#: One minibatch step: (x (B, C, H, W), y (B,)) -> the minibatch loss before the update.
StepFn = Callable[[Tensor, Tensor], float]

#: The local objective: (model, x (B, C, H, W), y (B,)) -> scalar loss tensor. Trainers
#: minimise whatever they are given (plain CE, or CE plus a strategy's regulariser such
#: as FedGen's), first-order by autograd or zeroth-order from forwards alone.
LossFn = Callable[[SplitModel, Tensor, Tensor], Tensor]


def cross_entropy_loss(model: SplitModel, x: Tensor, y: Tensor) -> Tensor:
    """The plain local objective: mean cross-entropy of ``model(x)`` (B, C) against ``y``."""
    return F.cross_entropy(model(x), y)


class Trainer(Protocol):
    """A local-update rule on a whole model; registered in :data:`clients.TRAINERS`."""

    def fit(
        self,
        model: SplitModel,
        data: Arrays,
        plan: FitPlan,
        device: torch.device,
        loss_fn: LossFn = cross_entropy_loss,
    ) -> FitStats:
        ...


def local_loop(data: Arrays, plan: FitPlan, device: torch.device, step: StepFn) -> float:
    """Run ``step`` over minibatches for ``local_steps`` steps or ``local_epochs`` epochs.

    Returns the mean minibatch loss.
    """
    if len(data) == 0:
        raise ValueError("this node has no training examples")
    gen = torch_generator(plan.data_seed)
    losses: list[float] = []
    epochs = plan.local_epochs if plan.local_steps == 0 else math.inf
    epoch = 0
    while epoch < epochs:
        for x, y in batches(data, plan.batch_size, device, gen):
            losses.append(step(x, y))
            if plan.local_steps and len(losses) >= plan.local_steps:
                return sum(losses) / len(losses)
        epoch += 1
    return sum(losses) / len(losses)


def measured(
    data: Arrays, plan: FitPlan, device: torch.device, step: StepFn, meter: Meter
) -> FitStats:
    """Run :func:`local_loop` inside ``meter`` and package the result."""
    with meter:
        loss = local_loop(data, plan, device, step)
    return FitStats(
        num_examples=len(data),
        train_loss=loss,
        forward_passes=meter.forward_passes,
        backward_passes=meter.backward_passes,
        peak_mem_mb=meter.peak_mem_mb,
        seconds=meter.seconds,
    )
