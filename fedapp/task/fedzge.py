"""FedZGE maths: the conditional image generator, its loss terms, the ZO step, KD.

Paper: Ma, Wang, Zhang, "Data-Free Black-Box Federated Learning via Zeroth-Order
Gradient Estimation", AAAI 2025, arXiv 2503.06028; official code
maxinge8698/FedZGE @ 2075064 (``generator.py``, ``server.py``). docs/strategies/fedzge.md.

The server never sees a client model: it sees only the logits clients return for a
synthetic batch x = G(z, y) and its q perturbed copies x_j = x + ε·u_j. From those
it forms the batch-level generator loss L_G at every copy, estimates ∂L_G/∂x by
forward differences (:func:`fedapp.task.zo.input_gradient_estimate`) and
back-propagates that estimate through its own white-box generator (a vector-Jacobian
product). Server and clients then distil from the data-size-weighted ensemble logits.

Everything here is plain torch (no Flower), shared by the strategy and the clients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedapp.task.batchnorm import batch_statistics
from fedapp.task.models import ImageSpec
from fedapp.task.zo import input_gradient_estimate, unit_directions

InfoTerm = Literal["own", "official"]
ImageRange = Literal["tanh", "unit"]
AnswerBN = Literal["batch", "running"]
DistillBN = Literal["update", "keep"]


class ImageGenerator(nn.Module):
    """Conditional image generator of the official ``generator.py``.

    docs/strategies/fedzge.md (Architectures).

    [Embedding(C, nz)(y) ; z] (2·nz) -> Linear -> (128, H/4, W/4) -> BN -> two ConvT(k4 s2 p1)
    upsamplings with BN and LeakyReLU(0.2) -> Conv3x3 to the dataset's channels -> BN -> tanh,
    so the images lie in [-1, 1] like the official code's (``image_range = "tanh"``,
    docs/strategies/fedzge.md (Data, reference numbers, quirks) quirk 4), or, with ``"unit"``,
    (tanh + 1)/2 in [0, 1] like the data the clients see. With nz = 100 and ngf = 64 on CIFAR-10
    it has about 2.04 M parameters; channels and size follow ``spec`` (MNIST: 1x28x28 from a 7x7
    seed). Height and width must be multiples of 4.
    """

    def __init__(
        self, spec: ImageSpec, latent_dim: int = 100, width: int = 64,
        image_range: ImageRange = "tanh",
    ) -> None:
        super().__init__()
        if spec.height % 4 or spec.width % 4:
            raise ValueError(
                f"the FedZGE generator needs image sides divisible by 4, got "
                f"{spec.height}x{spec.width}"
            )
        self.spec, self.latent_dim, self.unit = spec, latent_dim, image_range == "unit"
        self.seed_shape = (2 * width, spec.height // 4, spec.width // 4)
        self.embed = nn.Embedding(spec.num_classes, latent_dim)
        self.fc = nn.Linear(2 * latent_dim, math.prod(self.seed_shape))
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.ConvTranspose2d(2 * width, 2 * width, 4, 2, 1),  # (N, 2w, H/2, W/2)
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),  # (N, w, H, W)
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, spec.channels, 3, 1, 1),  # (N, C_img, H, W)
            nn.BatchNorm2d(spec.channels),
            nn.Tanh(),
        )

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """z (N, nz), y (N,) int64 -> images (N, C_img, H, W) in [-1, 1] (or [0, 1])."""
        h = self.fc(torch.cat([self.embed(y), z], dim=1))  # (N, 2w·H/4·W/4)
        x = self.body(h.view(-1, *self.seed_shape))
        return (x + 1) / 2 if self.unit else x


@dataclass(frozen=True, slots=True)
class Latents:
    """One synthetic batch's inputs: noise z (N, nz) and labels y (N,), sorted."""

    z: Tensor
    y: Tensor


def sample_latents(n: int, latent_dim: int, num_classes: int, seed: int) -> Latents:
    """z ~ N(0, I), y ~ U{0..C-1} sorted (official), from a private CPU generator."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn(n, latent_dim, generator=gen)  # (N, nz)
    y = torch.randint(0, num_classes, (n,), generator=gen).sort().values  # (N,)
    return Latents(z, y)


# -- queries ------------------------------------------------------------------------------


def perturbed_queries(x: Tensor, u: Tensor, eps: float) -> Tensor:
    """x_j = x + ε·u_j for every direction: x (N, *x), u (q, N, *x) -> (q, N, *x).

    Server and clients both call this, so in ``seed`` transport a client rebuilds
    bit for bit the batches the server would have sent (decision Z3, docs/strategies/fedzge.md).
    """
    return x.unsqueeze(0) + eps * u


def seeded_queries(x: Tensor, num_directions: int, seed: int, eps: float) -> Tensor:
    """The q perturbed copies of x from a direction seed: (q, N, *x) on x's device.

    Directions come from :func:`fedapp.task.zo.unit_directions`, generated on x's
    device with the same bits as on the server's CPU; the sum is one multiply and
    one add per element, each rounded once, so every device gets the same batches.
    """
    u = unit_directions(tuple(x.shape), num_directions, seed, x.device)  # (q, N, *x)
    return perturbed_queries(x.detach().float(), u, eps)


@torch.no_grad()
def answer_queries(
    model: nn.Module, x: Tensor, queries: Tensor, bn: AnswerBN = "batch", batch_size: int = 500
) -> Tensor:
    """A client's black-box answer: logits of x and of every x_j, under no grad.

    x (N, *x), queries (q, N, *x) -> (1 + q, N, C); row 0 is x itself.

    ``bn = "batch"`` (official, docs/strategies/fedzge.md (Generator loss and ZO estimator)): every one of the 1+q batches is answered in
    one forward pass whose BatchNorm layers normalise by that batch's own statistics,
    as ``compute_logits`` of the official ``node/client.py`` does on a model left in
    train mode; the running statistics are left untouched
    (:func:`fedapp.task.batchnorm.batch_statistics`). ``"running"``: eval mode, the
    running statistics learnt on the client's real data, in chunks of ``batch_size``.
    Models without BatchNorm give the same answer either way.
    """
    batches = torch.cat([x.unsqueeze(0), queries])  # (1+q, N, *x)
    if bn == "batch":
        with batch_statistics(model):
            return torch.stack([model(b) for b in batches])  # (1+q, N, C)
    model.eval()
    flat = batches.flatten(0, 1)  # ((1+q)·N, *x)
    out = torch.cat([model(b) for b in flat.split(batch_size)])  # ((1+q)·N, C)
    return out.view(1 + queries.shape[0], x.shape[0], -1)


def ensemble_weights(num_examples: Sequence[int]) -> Tensor:
    """w_k = n_k / Σ n over the clients that answered, float64 (K,).

    Step 4 of docs/strategies/fedzge.md (Round structure and wire).
    """
    n = torch.tensor([float(v) for v in num_examples], dtype=torch.float64)
    if n.numel() == 0 or float(n.sum()) <= 0:
        raise ValueError("ensemble weights need at least one client with examples")
    return n / n.sum()


def ensemble_logits(logits: Sequence[Tensor], num_examples: Sequence[int]) -> Tensor:
    """ℓ̄ = Σ_k w_k ℓ_k: K tensors (1+q, N, C) -> (1+q, N, C), float32."""
    w = ensemble_weights(num_examples)
    stacked = torch.stack([t.double() for t in logits])  # (K, 1+q, N, C)
    return torch.einsum("k,k...->...", w, stacked).float()


# -- generator loss: docs/strategies/fedzge.md (Generator loss and ZO estimator) ----------------


def fidelity_per_sample(ensemble: Tensor, y: Tensor) -> Tensor:
    """CE of every sample: ensemble (..., N, C), y (N,) -> (..., N)."""
    log_p = F.log_softmax(ensemble, dim=-1)  # (..., N, C)
    return -log_p.gather(-1, y.expand(*ensemble.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def fidelity_loss(ensemble: Tensor, y: Tensor) -> Tensor:
    """L_fid = CE(ℓ̄(x'), y): ensemble (..., N, C), y (N,) -> (...) (mean over the batch)."""
    return fidelity_per_sample(ensemble, y).mean(dim=-1)


def kl_per_sample(target_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """KL(σ(t/T) ‖ σ(s/T)) of every sample, no T²: (..., N, C), (..., N, C) -> (..., N)."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(target_logits / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def kl_to(target_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """KL(σ(t/T) ‖ σ(s/T)), mean over the batch, no T²: (..., N, C), (..., N, C) -> (...)."""
    return kl_per_sample(target_logits, student_logits, temperature).mean(dim=-1)


def adversarial_loss(ensemble: Tensor, server: Tensor, temperature: float) -> Tensor:
    """L_adv = −KL(σ(ℓ̄/T) ‖ σ(f_S/T)) (transferability; no T²): -> (...)."""
    return -kl_to(ensemble, server, temperature)


def diversity_loss(x: Tensor, z: Tensor, image_dims: int = 3) -> Tensor:
    """L_div = exp(−mean_{i,j} D_x(i,j)·D_z(i,j)), D the per-pair mean squared distance.

    x (..., N, *img) with ``image_dims`` trailing image dims, z (N, nz) -> (...).
    Differentiable in x (used exactly with decision Z4, docs/strategies/fedzge.md).
    """
    flat = x.flatten(-image_dims) if image_dims > 1 else x  # (..., N, D)
    return torch.exp(-(_pair_msd(flat) * _pair_msd(z)).mean(dim=(-2, -1)))


def _pair_msd(a: Tensor) -> Tensor:
    """Mean squared distance of every pair of rows: (..., N, D) -> (..., N, N), via Gram.

    Never builds the (N, N, D) difference tensor (1.5 GB in float64 for 500 MNIST images).
    """
    sq = a.pow(2).sum(dim=-1)  # (..., N)
    gram = a @ a.transpose(-2, -1)  # (..., N, N)
    return (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * gram).clamp_min(0) / a.shape[-1]


def class_marginal(ensemble: Tensor) -> Tensor:
    """p̄ = mean_i σ(ℓ̄(x'_i)): (..., N, C) -> (..., C)."""
    return F.softmax(ensemble, dim=-1).mean(dim=-2)


def info_loss(marginal: Tensor, reference: Tensor) -> Tensor:
    """L_info = Σ_c p̄_c log p̄ref_c (equilibrium); ``reference`` = ``marginal`` is −entropy."""
    return (marginal * torch.log(reference)).sum(dim=-1)


@dataclass(frozen=True, slots=True)
class GeneratorLossWeights:
    """β1 (adversarial), β2 (diversity), β3 (information) and the temperature T."""

    adversarial: float
    diversity: float
    info: float
    temperature: float


@torch.no_grad()
def generator_losses(
    ensemble: Tensor,
    server: Tensor,
    batches: Tensor,
    latents: Latents,
    weights: GeneratorLossWeights,
    info_term: InfoTerm = "own",
    with_diversity: bool = True,
    per_sample: bool = False,
) -> Tensor:
    """L_G at x and at every x_j, from logits alone: float64 (1+q,), or (1+q, N).

    ensemble, server: (1+q, N, C) logits of the ensemble and of f_S; batches (1+q, N, *x) the
    images (row 0 is x). L_G = L_fid + β1·L_adv + β2·L_div + β3·L_info.
    ``info_term = "official"`` reproduces quirk 2 of docs/strategies/fedzge.md (Data, reference
    numbers, quirks): the perturbed batches' term uses the *unperturbed* marginal as reference,
    Σ p̄(x_j) log p̄(x); ``"own"`` (decision Z2) uses each batch's own marginal.
    ``with_diversity = False`` drops β2·L_div (decision Z4: it is then differentiated exactly
    instead).

    ``per_sample``: the fidelity and adversarial terms are means over samples whose
    logits depend on their own image only (exactly so for eval-mode answers and BN-free
    clients; with batch-statistics answers, up to the weak coupling of the samples
    through the batch's mean and variance), so sample i's share
    (ℓ_fid,i + β1·ℓ_adv,i)/N is returned apart, plus the batch-level terms; row sums
    are not L_G, but differences per sample give each sample its own ZO coefficient.
    """
    ens = ensemble.double()  # (1+q, N, C)
    separable = fidelity_per_sample(ens, latents.y) - weights.adversarial * kl_per_sample(
        ens, server.double(), weights.temperature
    )  # (1+q, N)
    marginal = class_marginal(ens)  # (1+q, C)
    reference = marginal if info_term == "own" else marginal[:1]  # official: p̄(x) for all
    batch = weights.info * info_loss(marginal, reference)  # (1+q,)
    if with_diversity:
        images = batches.double().flatten(2)  # (1+q, N, D)
        batch = batch + weights.diversity * diversity_loss(images, latents.z.double(), 1)
    if per_sample:
        return separable / separable.shape[1] + batch.unsqueeze(1)  # (1+q, N)
    return separable.mean(dim=1) + batch  # (1+q,)


@torch.no_grad()
def loss_terms(
    ensemble: Tensor, server: Tensor, latents: Latents, weights: GeneratorLossWeights,
    x: Tensor | None = None,
) -> dict[str, float]:
    """The four terms of L_G at one batch, unweighted, for the logs: (N, C), (N, C) -> floats.

    The diversity term needs the images ``x`` (N, *x); without them it is left out.
    """
    ens = ensemble.double()
    marginal = class_marginal(ens)  # (C,)
    terms = {
        "generator-fidelity": float(fidelity_loss(ens, latents.y)),
        "generator-adversarial": float(adversarial_loss(ens, server.double(), weights.temperature)),
        "generator-info": float(info_loss(marginal, marginal)),
    }
    if x is not None:
        terms["generator-diversity"] = float(diversity_loss(x.double(), latents.z.double()))
    return terms


def zo_image_gradient(losses: Tensor, directions: Tensor, eps: float) -> Tensor:
    """ĝ_x from L_G at x (losses[0]) and at x_j (losses[1:]): (N, *x).

    docs/strategies/fedzge.md (Generator loss and ZO estimator).

    ĝ_x = (1/N) Σ_j (d/q)·[L_G(x_j) − L_G(x)]/ε · u_j, d the size of one image; with
    per-sample losses (1+q, N) each sample's direction gets its own difference.
    """
    return input_gradient_estimate(losses[1:], losses[0], directions, eps)


def generator_step(
    generator: ImageGenerator,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    grad_x: Tensor,
    latents: Latents | None = None,
    diversity_weight: float = 0.0,
) -> None:
    """Chain ĝ_x through G (x.backward(ĝ_x), a VJP) and take one optimiser step.

    With ``latents`` (decision Z4), β2·∇_x L_div(x, z) from autograd is added to ĝ_x.
    ``x`` must still carry G's graph.
    """
    optimizer.zero_grad(set_to_none=True)
    surrogate = (x * grad_x.to(x.dtype)).sum()  # ∂/∂x = ĝ_x
    if latents is not None and diversity_weight:
        surrogate = surrogate + diversity_weight * diversity_loss(x, latents.z.to(x.device))
    surrogate.backward()
    optimizer.step()


# -- knowledge distillation -----------------------------------------------------------------


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """L_KD = T²·KL(σ(ℓ̄/T) ‖ σ(f/T)): (N, C), (N, C) -> ().

    Steps 6 and 7 of docs/strategies/fedzge.md (Round structure and wire).
    """
    return temperature**2 * kl_to(teacher, student, temperature)


def distill(
    model: nn.Module,
    x: Tensor,
    teacher: Tensor,
    temperature: float,
    steps: int,
    lr: float,
    optimizer: torch.optim.Optimizer | None = None,
    bn: DistillBN = "update",
    after_step: Callable[[int], None] | None = None,
) -> float:
    """``steps`` full-batch KD steps of ``model`` on (x, ℓ̄(x)): Adam, cosine over steps.

    Used by the server (E2 steps, lr_S) and by every client (E3 steps, lr_k). The
    official code recreates Adam every round; pass ``optimizer`` to keep (and
    checkpoint) it. x (N, *x), teacher (N, C). Returns the mean KD loss over the steps.

    The model is in train mode, so BatchNorm normalises by the statistics of x (as
    officially); ``bn = "update"`` also moves the running statistics towards x's
    (official), ``"keep"`` leaves them as they were (a client keeps the statistics of
    its real data for evaluation). ``after_step(i)`` runs after step i = 1..steps.
    """
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    x, teacher = x.detach(), teacher.detach()
    total = 0.0
    for i in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        if bn == "keep":
            with batch_statistics(model):
                loss = kd_loss(model(x), teacher, temperature)
        else:
            model.train()
            loss = kd_loss(model(x), teacher, temperature)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += float(loss.detach())
        if after_step is not None:
            after_step(i)
    model.train()
    return total / max(steps, 1)
