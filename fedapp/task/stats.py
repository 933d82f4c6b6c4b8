"""Per-class feature statistics and their pooling (FedVTC, our reading of the paper).

Paper: Niu, Dong, Qin, "Bridging Generalization Gap of Heterogeneous Federated Clients Using
Generative Models", ICLR 2026, arXiv 2508.01669. Clients share per-class means and a dispersion
of their latent features; the paper's abstract says "mean and covariance". Our reading
(docs/strategies/fedvtc.md (Our reading of the paper), decision V5): a diagonal variance per
class, pooled on the server by the law of total variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class FeatureStats:
    """Per-class statistics of p-dim features over C classes.

    ``mean`` (C, p) and ``var`` (C, p) are float32, the population (biased)
    mean and per-dimension variance; ``count`` (C,) int64. Classes with a zero
    count have zero mean and variance.
    """

    mean: Tensor
    var: Tensor
    count: Tensor

    @property
    def present(self) -> Tensor:
        """(C,) bool: classes with at least one example."""
        return self.count > 0

    @property
    def std(self) -> Tensor:
        """(C, p) per-dimension standard deviation."""
        return self.var.clamp_min(0).sqrt()


class StatsAccumulator:
    """Streams features in minibatches and returns :class:`FeatureStats`.

    Sums are kept in float64 so ``E[z²] − E[z]²`` does not cancel badly.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        self.sum = torch.zeros(num_classes, dim, dtype=torch.float64)  # (C, p)
        self.sum_sq = torch.zeros(num_classes, dim, dtype=torch.float64)  # (C, p)
        self.count = torch.zeros(num_classes, dtype=torch.int64)  # (C,)

    def add(self, z: Tensor, y: Tensor) -> None:
        """Add features ``z`` (B, p) with labels ``y`` (B,)."""
        z64, y_cpu = z.detach().to("cpu", torch.float64), y.detach().cpu()
        self.sum.index_add_(0, y_cpu, z64)
        self.sum_sq.index_add_(0, y_cpu, z64 * z64)
        self.count += torch.bincount(y_cpu, minlength=self.count.numel())

    def result(self) -> FeatureStats:
        n = self.count.clamp_min(1).unsqueeze(1).to(torch.float64)  # (C, 1)
        mean = self.sum / n
        var = (self.sum_sq / n - mean * mean).clamp_min(0)
        return FeatureStats(mean.float(), var.float(), self.count.clone())


def class_stats(z: Tensor, y: Tensor, num_classes: int) -> FeatureStats:
    """Statistics of features ``z`` (N, p) with labels ``y`` (N,) in one call."""
    acc = StatsAccumulator(num_classes, z.shape[1])
    acc.add(z, y)
    return acc.result()


def pool_stats(parts: Sequence[FeatureStats]) -> FeatureStats:
    """Merge clients' statistics by the law of total variance.

    Step 3 of docs/strategies/fedvtc.md (Our reading of the paper).

    ``c^y = Σ_k n_k^y μ_k^y / n^y`` and
    ``σ_y² = Σ_k (n_k^y / n^y)·[s_k^y + (μ_k^y − c^y)²]`` with ``n^y = Σ_k n_k^y``:
    exactly the population mean and variance of the concatenated features.
    """
    if not parts:
        raise ValueError("pool_stats needs at least one FeatureStats")
    count = torch.stack([s.count for s in parts])  # (K, C)
    total = count.sum(0)  # (C,)
    weight = (count / total.clamp_min(1)).to(torch.float64).unsqueeze(2)  # (K, C, 1)
    means = torch.stack([s.mean for s in parts]).to(torch.float64)  # (K, C, p)
    variances = torch.stack([s.var for s in parts]).to(torch.float64)  # (K, C, p)
    mean = (weight * means).sum(0)  # (C, p)
    var = (weight * (variances + (means - mean) ** 2)).sum(0)  # (C, p)
    return FeatureStats(mean.float(), var.float(), total)
