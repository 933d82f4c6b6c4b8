"""Client-side trainers, chosen per node through the :data:`TRAINERS` registry."""

from __future__ import annotations

from collections.abc import Callable

from clients.base import FitPlan, FitStats, NodeSpec, Trainer
from clients.fo import FirstOrderTrainer
from clients.split import (
    SplitFirstOrderTrainer,
    SplitPlan,
    SplitResult,
    SplitTrainer,
    SplitZerothOrderTrainer,
)
from clients.zo import ZerothOrderTrainer, ZOPlan, zo_plan
from fedapp.config import AppConfig, NodeConfig
from fedapp.task.evaluate import resolve_device

TRAINERS: dict[str, type[Trainer] | type[SplitTrainer]] = {
    "fo": FirstOrderTrainer,
    "zo": ZerothOrderTrainer,
    "split-zo": SplitZerothOrderTrainer,
    "split-fo": SplitFirstOrderTrainer,
}

#: Trainers whose plan extends the FO-shaped :class:`FitPlan`: (plan, cfg, partition id) -> plan.
PLANS: dict[str, Callable[[FitPlan, AppConfig, int], FitPlan]] = {
    "zo": zo_plan,
}


def mixed_trainer(partition_id: int, num_partitions: int, zo_fraction: float) -> str:
    """``client.trainer = "mixed"``: the lowest ``round(zo_fraction * n)`` partition ids run ``zo``."""
    return "zo" if partition_id < round(zo_fraction * num_partitions) else "fo"


def split_trainer(name: str) -> SplitTrainer:
    """The split trainer registered as ``name`` (``split-zo``, ``split-fo``)."""
    trainer = TRAINERS[name]()
    if not hasattr(trainer, "fit_split"):
        raise ValueError(f"trainer {name!r} does not train split models (train.split)")
    return trainer  # type: ignore[return-value]


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


def plan_for(plan: FitPlan, cfg: AppConfig, node: NodeSpec) -> FitPlan:
    """The plan this node's trainer needs (``zo`` extends the base plan with ``zo.*``)."""
    build = PLANS.get(node.trainer)
    return build(plan, cfg, node.partition_id) if build else plan


__all__ = [
    "PLANS",
    "TRAINERS",
    "FitPlan",
    "FitStats",
    "NodeSpec",
    "Trainer",
    "ZOPlan",
    "ZerothOrderTrainer",
    "mixed_trainer",
    "plan_for",
    "resolve_node",
    "SplitPlan",
    "SplitResult",
    "SplitTrainer",
    "split_trainer",
]
