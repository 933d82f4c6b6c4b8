"""Client-side trainers, chosen per node through the :data:`TRAINERS` registry."""

from __future__ import annotations

from clients.base import FitPlan, FitStats, NodeSpec, Trainer
from clients.fo import FirstOrderTrainer
from clients.split import (
    SplitFirstOrderTrainer,
    SplitPlan,
    SplitResult,
    SplitTrainer,
    SplitZerothOrderTrainer,
)
from fedapp.config import AppConfig, NodeConfig
from fedapp.task.evaluate import resolve_device

TRAINERS: dict[str, type[Trainer] | type[SplitTrainer]] = {
    "fo": FirstOrderTrainer,
    "split-zo": SplitZerothOrderTrainer,
    "split-fo": SplitFirstOrderTrainer,
}


def split_trainer(name: str) -> SplitTrainer:
    """The split trainer registered as ``name`` (``split-zo``, ``split-fo``)."""
    trainer = TRAINERS[name]()
    if not hasattr(trainer, "fit_split"):
        raise ValueError(f"trainer {name!r} does not train split models (train.split)")
    return trainer  # type: ignore[return-value]


def resolve_node(node: NodeConfig, cfg: AppConfig) -> NodeSpec:
    """Node-config wins over run config for trainer, model, device and data."""
    return NodeSpec(
        partition_id=node.partition_id,
        num_partitions=node.num_partitions,
        trainer=node.trainer or cfg.client.trainer,
        model=node.model or cfg.model.name,
        device=resolve_device(node.device or cfg.client.device),
        data_path=node.data_path or None,
    )


__all__ = [
    "TRAINERS", "FitPlan", "FitStats", "NodeSpec", "SplitPlan", "SplitResult", "SplitTrainer",
    "Trainer", "resolve_node", "split_trainer",
]
