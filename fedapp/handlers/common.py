"""What every handler shares: config and node resolution, data, the FO/ZO fit plan, metrics."""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from clients import FitPlan, FitStats, NodeSpec, plan_for, resolve_node
from fedapp.wire.common import PROXIMAL_MU, TrainMetrics, get_float, round_config, server_round
from fedapp.config import AppConfig, load_config, load_node_config
from fedapp.task.data import ClientData, load_client_data
from fedapp.task.seeding import PURPOSE_DATA_ORDER, derive_seed


def prepare(context: Context) -> tuple[AppConfig, NodeSpec, ClientData]:
    cfg = load_config(context.run_config)
    node = resolve_node(load_node_config(context.node_config), cfg)
    torch.set_num_threads(cfg.client.num_threads)
    data = load_client_data(
        cfg.data, cfg.seed, node.partition_id, node.num_partitions, node.data_path
    )
    return cfg, node, data


def fit_plan(cfg: AppConfig, node: NodeSpec, msg: Message) -> FitPlan:
    config = round_config(msg.content)
    rnd = server_round(msg.content)
    c = cfg.client
    plan = FitPlan(
        server_round=rnd,
        lr=c.lr * c.lr_decay ** (rnd - 1),
        local_epochs=c.local_epochs,
        local_steps=c.local_steps,
        batch_size=c.batch_size,
        optimizer=c.optimizer,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        proximal_mu=get_float(config, PROXIMAL_MU, 0.0),
        data_seed=derive_seed(cfg.seed, PURPOSE_DATA_ORDER, rnd, node.partition_id),
    )
    return plan_for(plan, cfg, node)  # zo: the zo.* settings and this round's seeds


def fit_metrics(stats: FitStats) -> TrainMetrics:
    return TrainMetrics(stats.num_examples, stats.train_loss, stats.forward_passes,
                        stats.backward_passes, stats.peak_mem_mb, stats.seconds)
