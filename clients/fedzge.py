"""FedZGE's client: a private persistent model, black-box logit answers, local KD.

Paper: Ma, Wang, Zhang, AAAI 2025, arXiv 2503.06028; official ``client.py``
(docs/strategies/fedzge.md (Round structure and wire)). The model's weights never leave the
node: the ClientApp keeps them in the node's context state, and the only things a client sends
are its example count, logits of the server's synthetic images and scalar metrics. Each node may
run its own architecture (``model.clients`` or node-config ``model``). Tensors in, tensors out:
no Flower here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clients.base import FitPlan, FitStats, Trainer
from fedapp.task.data import Arrays
from fedapp.task.evaluate import evaluate
from fedapp.task.fedzge import AnswerBN, DistillBN, answer_queries, distill, seeded_queries
from fedapp.task.models import SplitModel

#: Reported for an accuracy that was not measured (``fedzge.client-eval``, empty split).
NOT_MEASURED = -1.0


def local_update(
    model: SplitModel, data: Arrays, plan: FitPlan, device: torch.device, trainer: Trainer
) -> FitStats:
    """Step 1: E1 epochs on the private model with ``trainer`` (a fresh Adam, cosine, per round).

    Official: Adam(0.01) recreated every round, cosine annealing over E1 epochs; the
    plan anneals per step instead of per epoch (same end points, smoother in between).
    ``fedzge.local-epochs = 0`` skips the update.
    """
    if plan.local_epochs == 0:
        model.to(device).train()
        return FitStats(len(data), 0.0, 0, 0, 0.0, 0.0)
    return trainer.fit(model, data, plan, device)


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
    copies are rebuilt from ``seed`` (``seed`` transport, decision Z3, docs/strategies/fedzge.md).
    ``bn``: ``fedzge.answer-bn`` (see :func:`fedapp.task.fedzge.answer_queries`).
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
    """E3 full-batch KD steps on (x, ℓ̄(x)) with a fresh Adam(lr_k).

    Step 7 of docs/strategies/fedzge.md (Round structure and wire). ``bn``:
    ``fedzge.client-kd-bn``; ``keep`` leaves the BatchNorm running statistics of the
    client's real data untouched by the synthetic batch.
    """
    model.to(device)
    return distill(model, x.to(device), soft_labels.to(device), temperature, steps, lr, bn=bn)


def accuracy(model: SplitModel, data: Arrays | None, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy on ``data``, or :data:`NOT_MEASURED` when there is none."""
    if data is None or len(data) == 0:
        return NOT_MEASURED
    return evaluate(model, data, batch_size, device).accuracy
