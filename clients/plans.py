"""Who this node is and what it does this round: node resolution and every local plan.

The one place where run config, node config and a server message's round settings
become a :class:`~clients.base.NodeSpec` and a plan: :func:`fit_plan` (weights
protocol, FedVTC's classifier; zeroth-order nodes get a :class:`~clients.zo.ZOPlan`),
:func:`zo_seed_plan`, :func:`split_plan`, :func:`vtc_plan` and :func:`fedzge_plan`.
Round learning rates come from :func:`fedapp.task.schedule.round_lr`. No Flower here:
handlers decode the message and pass plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace

from clients.base import FitPlan, NodeSpec
from clients.fedvtc import VTCPlan
from clients.split import SplitPlan
from clients.zo import ZOPlan
from fedapp.config import AppConfig, NodeConfig
from fedapp.task.evaluate import resolve_device
from fedapp.task.schedule import round_lr
from fedapp.task.seeding import (
    PURPOSE_DATA_ORDER,
    PURPOSE_SPLIT_DIRECTIONS,
    PURPOSE_VTC_NOISE,
    PURPOSE_ZO_STEP,
    derive_seed,
)


def mixed_trainer(partition_id: int, num_partitions: int, zo_fraction: float) -> str:
    """``client.trainer = "mixed"``: the lowest ``round(zo_fraction * n)`` partition ids run ``zo``."""
    return "zo" if partition_id < round(zo_fraction * num_partitions) else "fo"


def resolve_node(node: NodeConfig, cfg: AppConfig) -> NodeSpec:
    """Node-config wins over run config for trainer, model, device and data."""
    trainer = node.trainer or cfg.client.trainer
    if trainer == "mixed":
        trainer = mixed_trainer(node.partition_id, node.num_partitions, cfg.client.zo_fraction)
    return NodeSpec(
        partition_id=node.partition_id,
        num_partitions=node.num_partitions,
        trainer=trainer,
        model=node.model or cfg.model.for_partition(node.partition_id),
        device=resolve_device(node.device or cfg.client.device),
        data_path=node.data_path or None,
    )


def _data_seed(cfg: AppConfig, node: NodeSpec, server_round: int) -> int:
    return derive_seed(cfg.seed, PURPOSE_DATA_ORDER, server_round, node.partition_id)


def _zo_plan(plan: FitPlan, cfg: AppConfig, node: NodeSpec) -> ZOPlan:
    """The ``zo`` trainer's plan: the ``zo.*`` settings and this round's derived seeds."""
    z = cfg.zo
    base = {f.name: getattr(plan, f.name) for f in fields(FitPlan)}
    base.update(
        lr=round_lr(z.lr, cfg.client.lr_decay, plan.server_round),
        local_steps=z.local_steps,
        momentum=z.momentum,
        weight_decay=z.weight_decay,
    )
    return ZOPlan(
        **base,
        num_directions=z.num_directions,
        mu=z.mu,
        estimator=z.estimator,
        direction=z.direction,
        exact_restore=z.exact_restore,
        seed_base=derive_seed(cfg.seed, PURPOSE_ZO_STEP, plan.server_round),
        seed_salt=node.partition_id if z.seed_source == "client" else None,
    )


#: Trainers whose plan extends the ``client.*`` plan with settings of their own.
TRAINER_PLANS: dict[str, Callable[[FitPlan, AppConfig, NodeSpec], FitPlan]] = {
    "zo": _zo_plan,
}


def fit_plan(
    cfg: AppConfig, node: NodeSpec, server_round: int, proximal_mu: float = 0.0,
    max_grad_norm: float = 0.0,
) -> FitPlan:
    """One local update of this node's trainer from ``client.*`` (``zo``: from ``zo.*``)."""
    c = cfg.client
    plan = FitPlan(
        server_round=server_round,
        lr=round_lr(c.lr, c.lr_decay, server_round),
        local_epochs=c.local_epochs,
        local_steps=c.local_steps,
        batch_size=c.batch_size,
        optimizer=c.optimizer,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        proximal_mu=proximal_mu,
        data_seed=_data_seed(cfg, node, server_round),
        max_grad_norm=max_grad_norm,
    )
    extend = TRAINER_PLANS.get(node.trainer)
    return extend(plan, cfg, node) if extend else plan


def zo_seed_plan(
    cfg: AppConfig, node: NodeSpec, server_round: int, seed_base: int, lr: float
) -> FitPlan:
    """zo-seed: the ``zo`` plan with the seed base and η_t the server handed out."""
    plan = fit_plan(cfg, node, server_round)
    if not isinstance(plan, ZOPlan):
        raise ValueError(f"zo-seed needs trainer 'zo'; this node has {node.trainer!r}")
    return replace(plan, seed_base=seed_base, lr=lr)


def split_plan(
    cfg: AppConfig, node: NodeSpec, server_round: int, local_steps: int, upload_every: int,
    smoothing: float, lr: float,
) -> SplitPlan:
    """HERON-SFL / CSE-FSL: the server's h, k, μ, η_l and the ``heron.*`` client settings."""
    h = cfg.heron
    return SplitPlan(
        server_round=server_round,
        local_steps=local_steps,
        upload_every=upload_every,
        batch_size=h.batch_size,
        lr=lr,
        optimizer=h.client_optimizer,
        data_seed=_data_seed(cfg, node, server_round),
        direction_seed=derive_seed(
            cfg.seed, PURPOSE_SPLIT_DIRECTIONS, server_round, node.partition_id
        ),
        directions=h.directions,
        smoothing=smoothing,
        direction=h.direction,
        estimator=h.estimator,
        bn=h.bn,
    )


def vtc_plan(cfg: AppConfig, node: NodeSpec, server_round: int) -> VTCPlan:
    """FedVTC: the classifier's ``client.*`` plan (clipped) and the ``fedvtc.*`` settings."""
    f = cfg.fedvtc
    return VTCPlan(
        fit=fit_plan(cfg, node, server_round, max_grad_norm=f.max_grad_norm),
        lambda_kl=f.lambda_kl, lambda_dm=f.lambda_dm, lambda_syn=f.lambda_syn,
        delta=f.delta, decoder_lr=f.decoder_lr, decoder_epochs=f.decoder_epochs,
        synthetic_batch=f.synthetic_batch, finetune_steps=f.finetune_steps, mix_real=f.mix_real,
        dm=f.dm,
        noise_seed=derive_seed(cfg.seed, PURPOSE_VTC_NOISE, server_round, node.partition_id),
    )


def fedzge_plan(cfg: AppConfig, node: NodeSpec, server_round: int) -> FitPlan:
    """FedZGE step 1: E1 epochs of Adam(lr_k) with batch B, cosine within the round."""
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
        data_seed=_data_seed(cfg, node, server_round),
        lr_schedule="cosine",
    )
