"""What every handler shares: config and node resolution, data, metrics and client info."""

from __future__ import annotations

import torch
from flwr.app import Context

from clients.base import FitStats, NodeSpec
from clients.plans import resolve_node
from fedapp.config import AppConfig, load_config, load_node_config
from fedapp.task.data import ClientData, load_client_data
from fedapp.task.partition import label_histogram
from fedapp.wire.common import ClientInfo, TrainMetrics


def prepare(context: Context) -> tuple[AppConfig, NodeSpec, ClientData]:
    """The validated run config, this node (node-config first) and its data."""
    cfg = load_config(context.run_config)
    node = resolve_node(load_node_config(context.node_config), cfg)
    torch.set_num_threads(cfg.client.num_threads)
    data = load_client_data(
        cfg.data, cfg.seed, node.partition_id, node.num_partitions, node.data_path
    )
    return cfg, node, data


def require_trainer(node: NodeSpec, allowed: frozenset[str], protocol: str) -> None:
    """Refuse a node whose trainer ``protocol`` cannot drive (one line, naming both)."""
    if node.trainer not in allowed:
        raise ValueError(
            f"{protocol} clients train with trainer {', '.join(sorted(allowed))}; "
            f"this node has trainer {node.trainer!r}"
        )


def require_global_model(cfg: AppConfig, node: NodeSpec, protocol: str) -> None:
    """Refuse a node whose architecture is not the global model ``protocol`` aggregates.

    Only a node-config ``model`` can differ here (the ServerApp refuses ``model.clients``
    for such strategies), so the line names that key, before any weights are loaded.
    """
    if node.model != cfg.model.name:
        raise ValueError(
            f"node-config model = {node.model!r} is invalid: {protocol} clients train the one "
            f"global model {cfg.model.name!r}; set model = {cfg.model.name!r} or drop model "
            "from this node's node-config"
        )


def train_metrics(stats: FitStats) -> TrainMetrics:
    """A trainer's stats as the wire's train metrics."""
    return TrainMetrics(stats.num_examples, stats.train_loss, stats.forward_passes,
                        stats.backward_passes, stats.peak_mem_mb, stats.seconds)


def client_info(node: NodeSpec, data: ClientData, label_counts: list[int] | None = None) -> ClientInfo:
    """This node's ``client-info``; label counts default to its training-label histogram."""
    counts = label_counts if label_counts is not None else label_histogram(
        data.train.y, data.spec.num_classes
    )
    return ClientInfo(node.partition_id, node.trainer, node.model, counts)
