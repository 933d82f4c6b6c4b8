"""FedVTC's variational transposed-convolution decoder and its losses (our reading of the paper).

Paper: Niu, Dong, Qin, "Bridging Generalization Gap of Heterogeneous Federated Clients Using
Generative Models", ICLR 2026, arXiv 2508.01669. No official code exists; the paper gives L_VTC
= L_rec + D_KL + L_DM without formulas. This module is **our reading of the paper**
(docs/strategies/fedvtc.md (Our reading of the paper)): a decoder ψ from the common p-dim latent
to an image, latents ``v = z + σ ⊙ ε`` (reparameterisation with the global class dispersion), a
KL term that pulls local features towards the global class Gaussians, and a
distribution-matching (DM) term that keeps ψ faithful on *global* latents (``fedvtc.dm``: first
moments, cycle or MMD; decision V6). Left out: a full covariance (``fedvtc.cov = diag`` only,
decision V5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedapp.task.models import ImageSpec
from fedapp.task.stats import FeatureStats


class VTCDecoder(nn.Module):
    """ψ: (B, p) latents -> (B, C, H, W) images in [0, 1], identical on every client.

    docs/strategies/fedvtc.md (Our reading of the paper).

    Linear p -> 64·(H/4)·(W/4), BN, ReLU; ConvT 64->32 (k4 s2 p1), BN, ReLU;
    ConvT 32->16 (k4 s2 p1), BN, ReLU; Conv3x3 16->C, sigmoid. Supports every
    image size divisible by 4: 28x28x1 (MNIST, ≈245 k parameters at p = 64),
    8x8x1 (digits), 32x32x3 (CIFAR, ≈308 k).
    """

    def __init__(self, latent_dim: int, spec: ImageSpec) -> None:
        super().__init__()
        if spec.height % 4 or spec.width % 4:
            raise ValueError(
                f"VTC decoder needs image sides divisible by 4, got {spec.height}x{spec.width}"
            )
        self.latent_dim = latent_dim
        self.h0, self.w0 = spec.height // 4, spec.width // 4  # s0 = s/4
        self.project = nn.Linear(latent_dim, 64 * self.h0 * self.w0)
        self.body = nn.Sequential(
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # (B, 32, H/2, W/2)
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),  # (B, 16, H, W)
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, spec.channels, 3, padding=1),  # (B, C, H, W)
            nn.Sigmoid(),
        )

    def forward(self, v: Tensor) -> Tensor:
        """(B, p) -> (B, C, H, W)."""
        h = self.project(v).view(-1, 64, self.h0, self.w0)  # (B, 64, H/4, W/4)
        return self.body(h)


def build_decoder(latent_dim: int, spec: ImageSpec, seed: int) -> VTCDecoder:
    """A freshly initialised ψ, reproducible from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VTCDecoder(latent_dim, spec)


def reparameterize(mean: Tensor, std: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """``v = mean + std ⊙ ε`` with ε ~ N(0, I); all (B, p)."""
    eps = torch.randn(mean.shape, generator=gen, dtype=mean.dtype).to(mean.device)
    return mean + std * eps


def sample_latents(
    stats: FeatureStats, n: int, gen: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``v_g ~ N(c^y, diag σ_y²)`` with y uniform over the classes present globally.

    Returns latents (n, p) and labels (n,) on the statistics' device.
    """
    classes = stats.present.nonzero().flatten()  # (C',)
    if classes.numel() == 0:
        raise ValueError("no class has any example in the global statistics")
    pick = torch.randint(classes.numel(), (n,), generator=gen).to(classes.device)
    y = classes[pick]  # (n,)
    return reparameterize(stats.mean[y], stats.std[y], gen), y


@torch.no_grad()
def synthesize(
    decoder: VTCDecoder, stats: FeatureStats, n: int, gen: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Synthetic images x' = ψ(v_g) (n, C, H, W) and labels (n,), decoder in eval mode."""
    was_training = decoder.training
    decoder.eval()
    v, y = sample_latents(stats, n, gen)
    x = decoder(v.to(next(decoder.parameters()).device))
    decoder.train(was_training)
    return x, y.to(x.device)


def kl_to_class(z: Tensor, y: Tensor, stats: FeatureStats, delta: float) -> Tensor:
    """``mean_batch Σ_dim (z − c^y)² / (2σ_y² + δ)``: KL(N(z, σ_y²) ‖ N(c^y, σ_y²)).

    ``z`` (B, p) features, ``y`` (B,) labels; rows whose class is absent from the
    global statistics contribute nothing.
    """
    keep = stats.present[y]  # (B,)
    if not bool(keep.any()):
        return z.sum() * 0.0
    z, y = z[keep], y[keep]
    return ((z - stats.mean[y]) ** 2 / (2 * stats.var[y] + delta)).sum(1).mean()


def reconstruction_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """``L_rec = MSE(ψ(v), x)`` over (B, C, H, W)."""
    return F.mse_loss(x_hat, x)


#: (features g(ψ(v_g)) (N, p), latents v_g (N, p), labels (N,), global stats) -> scalar.
DMLoss = Callable[[Tensor, Tensor, Tensor, FeatureStats], Tensor]


def dm_mean(features: Tensor, v: Tensor, y: Tensor, stats: FeatureStats) -> Tensor:
    """``(1/|Y|) Σ_y ‖mean_{i: y_i = y} features_i − c^y‖² / p`` (first moments; the default)."""
    classes = y.unique()
    gaps = [features[y == c].mean(0) - stats.mean[c] for c in classes]  # |Y| x (p,)
    return torch.stack(gaps).pow(2).sum(1).mean() / features.shape[1]


def dm_cycle(features: Tensor, v: Tensor, y: Tensor, stats: FeatureStats) -> Tensor:
    """``mean_i ‖features_i − v_i‖² / p``: each decoded latent must encode back to itself."""
    return (features - v).pow(2).sum(1).mean() / features.shape[1]


def dm_mmd(features: Tensor, v: Tensor, y: Tensor, stats: FeatureStats) -> Tensor:
    """Class-conditional MMD² between ``features`` and ``v``.

    The kernel is ``exp(−‖a − b‖² / h)·[y_a = y_b]``, a product kernel on
    (feature, label), so this compares the joint distributions; h is the median
    pairwise squared distance of the latents (detached).
    """
    same = (y.unsqueeze(0) == y.unsqueeze(1)).to(features.dtype)  # (N, N)
    bandwidth = torch.cdist(v, v).pow(2).median().detach().clamp_min(1e-6)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / bandwidth) * same  # (N, N)

    return kernel(features, features).mean() + kernel(v, v).mean() - 2 * kernel(features, v).mean()


#: ``fedvtc.dm`` -> distribution-matching loss (decision V6, docs/strategies/fedvtc.md).
DM_LOSSES: dict[str, DMLoss] = {"mean": dm_mean, "cycle": dm_cycle, "mmd": dm_mmd}


def average_states(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]
) -> dict[str, Tensor]:
    """Weighted average of state dicts (BN buffers included; integer buffers rounded back)."""
    if not states:
        raise ValueError("average_states needs at least one state dict")
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()  # (K,)
    out = {}
    for key, ref in states[0].items():
        stacked = torch.stack([s[key].to(torch.float64) for s in states])  # (K, *shape)
        mean = torch.einsum("k,k...->...", w, stacked)
        out[key] = (mean.round() if not ref.is_floating_point() else mean).to(ref.dtype)
    return out
