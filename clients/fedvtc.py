"""FedVTC client side on tensors: classifier, statistics, decoder, synthetic fine-tuning.

Paper: Niu, Dong, Qin, "Bridging Generalization Gap of Heterogeneous Federated Clients Using
Generative Models", ICLR 2026, arXiv 2508.01669. No official code exists; this is **our reading
of the paper** (docs/strategies/fedvtc.md (Our reading of the paper)). Per round a client

1. trains its own classifier f_k = h_k ∘ g_k on real data with
   ``CE + λ_KL·KL(N(g_k(x), σ_y²) ‖ N(c^y, σ_y²))`` against last round's global
   statistics (:func:`train_classifier`);
2. reports per-class means, variances and counts of g_k(x) (:func:`feature_stats`);
4. trains the decoder ψ with f_k frozen: ``L_rec + λ_DM·L_DM`` (:func:`train_decoder`);
5. fine-tunes all of f_k with ψ frozen on ψ(v_g), v_g ~ N(c^y, σ_y²), mixed with
   real data by default (:func:`finetune`).

Classifier and decoder never hold autograd graphs at the same time: step 1 and
step 5 differentiate f_k only, step 4 differentiates ψ only (f_k's parameters
have ``requires_grad`` off while gradients flow through it to ψ).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clients.base import FitPlan, FitStats, Trainer, local_loop
from fedapp.task.data import Arrays, batches
from fedapp.task.metering import Meter
from fedapp.task.models import SplitModel
from fedapp.task.seeding import torch_generator
from fedapp.task.stats import FeatureStats, StatsAccumulator
from fedapp.task.vtc import (
    DM_LOSSES,
    VTCDecoder,
    kl_to_class,
    reconstruction_loss,
    reparameterize,
    sample_latents,
    synthesize,
)


@dataclass(frozen=True, slots=True)
class VTCPlan:
    """One FedVTC client round: the classifier's plan plus the VTC settings (``fedvtc.*``)."""

    fit: FitPlan  # classifier: lr, batch size, epochs, data order, gradient clipping
    lambda_kl: float
    lambda_dm: float
    lambda_syn: float
    delta: float
    decoder_lr: float
    decoder_epochs: int
    synthetic_batch: int
    finetune_steps: int  # 0: one pass of the local data
    mix_real: bool
    dm: str  # key of fedapp.task.vtc.DM_LOSSES
    noise_seed: int  # ε of the reparameterisation and the synthetic latents


@dataclass(frozen=True, slots=True)
class DecoderStats:
    """What a decoder phase reports (means over its minibatches)."""

    num_examples: int
    vtc_loss: float
    rec_loss: float
    dm_loss: float
    seconds: float


def train_classifier(
    model: SplitModel,
    data: Arrays,
    plan: VTCPlan,
    global_stats: FeatureStats | None,
    device: torch.device,
    trainer: Trainer,
) -> FitStats:
    """Step 1: ``CE(h(g(x)), y) + λ_KL·mean Σ (g(x) − c^y)² / (2σ_y² + δ)`` with ``trainer``.

    Without global statistics (the first round) the loss is plain CE.
    """
    stats = _to(global_stats, device) if global_stats is not None else None

    def loss_fn(m: SplitModel, x: Tensor, y: Tensor) -> Tensor:
        z = m.features(x)  # (B, p)
        loss = F.cross_entropy(m.head(z), y)
        if stats is not None and plan.lambda_kl > 0:
            loss = loss + plan.lambda_kl * kl_to_class(z, y, stats, plan.delta)
        return loss

    return trainer.fit(model, data, plan.fit, device, loss_fn)


@torch.inference_mode()
def feature_stats(
    model: SplitModel, data: Arrays, num_classes: int, batch_size: int, device: torch.device
) -> FeatureStats:
    """Step 2: per-class mean, variance and count of g_k(x) over the local training data."""
    model.to(device).eval()
    acc = StatsAccumulator(num_classes, model.latent_dim)
    for x, y in batches(data, batch_size, device):
        acc.add(model.features(x), y)  # (B, p), (B,)
    return acc.result()


def train_decoder(
    model: SplitModel,
    decoder: VTCDecoder,
    data: Arrays,
    global_stats: FeatureStats,
    plan: VTCPlan,
    optimizer_state: dict[str, Any] | None,
    device: torch.device,
) -> tuple[DecoderStats, dict[str, Any]]:
    """Step 4: Adam on ψ with f_k frozen; returns the phase's losses and Adam's state.

    ``L_rec = MSE(ψ(g(x) + σ_y ⊙ ε), x)``; ``L_DM`` from ``plan.dm`` on
    ``g(ψ(v_g))`` with ``v_g ~ N(c^y, diag σ_y²)``, y uniform over the classes
    present globally, as many as the real minibatch.
    """
    stats = _to(global_stats, device)
    model.to(device).eval()  # frozen: BN running statistics untouched
    decoder.to(device).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=plan.decoder_lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    dm_loss = DM_LOSSES[plan.dm]
    gen = torch_generator(plan.noise_seed)
    rec_losses: list[float] = []
    dm_losses: list[float] = []

    def step(x: Tensor, y: Tensor) -> float:
        with torch.no_grad():
            z = model.features(x)  # (B, p)
        rec = reconstruction_loss(decoder(reparameterize(z, stats.std[y], gen)), x)
        v_g, y_g = sample_latents(stats, x.shape[0], gen)  # (B, p), (B,)
        dm = dm_loss(model.features(decoder(v_g)), v_g, y_g, stats)
        loss = rec + plan.lambda_dm * dm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rec_losses.append(float(rec.detach()))
        dm_losses.append(float(dm.detach()))
        return float(loss.detach())

    decoder_plan = dataclasses.replace(plan.fit, local_epochs=plan.decoder_epochs, local_steps=0)
    meter = Meter(device)
    with _frozen(model), meter:
        loss = local_loop(data, decoder_plan, device, step)
    out = DecoderStats(
        num_examples=len(data),
        vtc_loss=loss,
        rec_loss=sum(rec_losses) / len(rec_losses),
        dm_loss=sum(dm_losses) / len(dm_losses),
        seconds=meter.seconds,
    )
    return out, optimizer.state_dict()


def finetune(
    model: SplitModel,
    decoder: VTCDecoder,
    data: Arrays,
    global_stats: FeatureStats,
    plan: VTCPlan,
    device: torch.device,
    trainer: Trainer,
) -> FitStats:
    """Step 5: all of f_k on ``CE(f(x), y) + λ_syn·CE(f(x'), y')``, x' = ψ(v_g) under no-grad.

    ``plan.mix_real = False`` drops the real term. Runs ``plan.finetune_steps``
    steps, or one pass of the local data when that is 0.
    """
    stats = _to(global_stats, device)
    decoder.to(device)
    gen = torch_generator(plan.noise_seed + 1)

    def loss_fn(m: SplitModel, x: Tensor, y: Tensor) -> Tensor:
        x_syn, y_syn = synthesize(decoder, stats, plan.synthetic_batch, gen)  # (S, C, H, W), (S,)
        loss = plan.lambda_syn * F.cross_entropy(m(x_syn), y_syn)
        return loss + F.cross_entropy(m(x), y) if plan.mix_real else loss

    ft_plan = dataclasses.replace(plan.fit, local_epochs=1, local_steps=plan.finetune_steps)
    return trainer.fit(model, data, ft_plan, device, loss_fn)


@contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """``requires_grad`` off for ``module``'s trainable parameters, then restored."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _to(stats: FeatureStats, device: torch.device) -> FeatureStats:
    return FeatureStats(stats.mean.to(device), stats.var.to(device), stats.count.to(device))
