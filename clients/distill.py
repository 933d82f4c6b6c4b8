"""FedZGE's client: a private persistent model, black-box logit answers, local KD.

Paper: Ma, Wang, Zhang, AAAI 2025, arXiv 2503.06028; official ``client.py`` (SPEC §3.2).
The model's weights never leave the node: the ClientApp keeps them in the node's
context state, and the only things a client sends are its example count, logits
of the server's synthetic images and scalar metrics. Each node may run its own
architecture (``model.clients`` or node-config ``model``). Tensors in, tensors out: no Flower here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clients.base import FitPlan, FitStats, measured
from fedapp.config import AppConfig
from fedapp.task.data import Arrays
from fedapp.task.evaluate import evaluate
from fedapp.task.fedzge import AnswerBN, DistillBN, answer_queries, distill, seeded_queries
from fedapp.task.metering import Meter
from fedapp.task.models import SplitModel

#: Reported for an accuracy that was not measured (``fedzge.client-eval``, empty split).
NOT_MEASURED = -1.0


def local_plan(cfg: AppConfig, server_round: int, data_seed: int) -> FitPlan:
    """E1 epochs of Adam(lr_k) with batch B (SPEC §3.2 step 1); the schedule is cosine."""
    z = cfg.fedzge
    return FitPlan(
        server_round=server_round,
        lr=z.client_lr,
        local_epochs=z.local_epochs,
        local_steps=0,
        batch_size=z.batch_size,
        optimizer="adam",
        momentum=0.0,
        weight_decay=0.0,
        proximal_mu=0.0,
        data_seed=data_seed,
    )


def train_private(
    model: SplitModel, data: Arrays, plan: FitPlan, device: torch.device
) -> FitStats:
    """Local update of the private model: fresh Adam, cosine over all E1 epochs' steps.

    Official: Adam(0.01) recreated every round, cosine annealing over E1 epochs; we
    anneal per step instead of per epoch (same end points, smoother in between).
    """
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=plan.lr)
    steps_per_epoch = -(-len(data) // plan.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, plan.local_epochs * steps_per_epoch)
    )
    meter = Meter(device)

    def step(x: Tensor, y: Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        schedule.step()
        meter.forward_passes += 1
        meter.backward_passes += 1
        return float(loss.detach())

    if plan.local_epochs == 0:
        return FitStats(len(data), 0.0, 0, 0, 0.0, 0.0)
    return measured(data, plan, device, step, meter)


def query_answer(
    model: SplitModel,
    x: Tensor,
    perturbed: Tensor | None,
    num_directions: int,
    seed: int,
    eps: float,
    device: torch.device,
    bn: AnswerBN = "batch",
) -> Tensor:
    """Logits (1+q, N, C) of x and its q perturbed copies, as float32 on the CPU.

    ``perturbed`` (q, N, *x) when the server sent the batches (``tensor``), else the
    copies are rebuilt from ``seed`` (``seed`` transport, SPEC §3.6 Z3). ``bn``:
    ``fedzge.answer-bn`` (see :func:`fedapp.task.fedzge.answer_queries`).
    """
    queries = perturbed if perturbed is not None else seeded_queries(x, num_directions, seed, eps)
    model.to(device)
    return answer_queries(model, x.to(device), queries.to(device), bn).float().cpu()


def distill_private(
    model: SplitModel,
    x: Tensor,
    soft_labels: Tensor,
    temperature: float,
    steps: int,
    lr: float,
    device: torch.device,
    bn: DistillBN = "update",
) -> float:
    """E3 full-batch KD steps on (x, ℓ̄(x)) with a fresh Adam(lr_k) (SPEC §3.2 step 7).

    ``bn``: ``fedzge.client-kd-bn``; ``keep`` leaves the BatchNorm running statistics
    of the client's real data untouched by the synthetic batch.
    """
    model.to(device)
    return distill(model, x.to(device), soft_labels.to(device), temperature, steps, lr, bn=bn)


def accuracy(model: SplitModel, data: Arrays | None, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy on ``data``, or :data:`NOT_MEASURED` when there is none."""
    if data is None or len(data) == 0:
        return NOT_MEASURED
    return evaluate(model, data, batch_size, device).accuracy
