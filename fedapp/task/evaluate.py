"""Evaluation of a classifier on held-out data, under inference mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedapp.task.data import Arrays, batches


@dataclass(frozen=True, slots=True)
class EvalResult:
    loss: float  # mean cross-entropy
    accuracy: float  # top-1, in [0, 1]
    num_examples: int


def evaluate(model: nn.Module, data: Arrays, batch_size: int, device: torch.device) -> EvalResult:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``data``."""
    if len(data) == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    model.to(device).eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for x, y in batches(data, batch_size, device):
            logits = model(x)  # (B, C)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
            correct += int((logits.argmax(1) == y).sum())
    n = len(data)
    return EvalResult(loss_sum / n, correct / n, n)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use 'auto'")
    return torch.device(name)
