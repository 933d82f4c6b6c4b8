"""The one ClientApp: thin handlers that decode, delegate to a trainer, encode.

Every call validates the run config and this node's node-config, so a bad
value fails the call with a one-line error reply instead of training on it.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from clients import (
    TRAINERS,
    FitPlan,
    NodeSpec,
    SplitPlan,
    SplitResult,
    resolve_node,
    split_trainer,
)
from clients.faults import inject
from fedapp import records
from fedapp.config import AppConfig, load_config, load_node_config
from fedapp.task.data import ClientData, load_client_data
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.partition import label_histogram
from fedapp.task.seeding import PURPOSE_DATA_ORDER, PURPOSE_SPLIT_DIRECTIONS, derive_seed
from fedapp.task.split import build_split

app = ClientApp()


def _prepare(context: Context) -> tuple[AppConfig, NodeSpec, ClientData]:
    cfg = load_config(context.run_config)
    node = resolve_node(load_node_config(context.node_config), cfg)
    torch.set_num_threads(cfg.client.num_threads)
    data = load_client_data(
        cfg.data, cfg.seed, node.partition_id, node.num_partitions, node.data_path
    )
    return cfg, node, data


def _model(node: NodeSpec, data: ClientData, msg: Message) -> SplitModel:
    model = build_model(node.model, data.spec)
    model.load_state_dict(records.unpack_arrays(msg.content))
    return model


def _plan(cfg: AppConfig, node: NodeSpec, msg: Message) -> FitPlan:
    config = records.round_config(msg.content)
    server_round = int(config.get(records.SERVER_ROUND, 1))  # type: ignore[arg-type]
    c = cfg.client
    return FitPlan(
        server_round=server_round,
        lr=c.lr * c.lr_decay ** (server_round - 1),
        local_epochs=c.local_epochs,
        local_steps=c.local_steps,
        batch_size=c.batch_size,
        optimizer=c.optimizer,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        proximal_mu=float(config.get(records.PROXIMAL_MU, 0.0)),  # type: ignore[arg-type]
        data_seed=derive_seed(cfg.seed, PURPOSE_DATA_ORDER, server_round, node.partition_id),
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local update with this node's trainer; reply weights, metrics and label counts."""
    cfg, node, data = _prepare(context)
    model = _model(node, data, msg)
    stats = TRAINERS[node.trainer]().fit(model, data.train, _plan(cfg, node, msg), node.device)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if cfg.client.faulty(node.partition_id):
        state = inject(cfg.client.fault, state)
    metrics = {
        records.NUM_EXAMPLES: stats.num_examples,
        "train-loss": stats.train_loss,
        "forward-passes": stats.forward_passes,
        "backward-passes": stats.backward_passes,
        "peak-mem-mb": stats.peak_mem_mb,
        "train-s": stats.seconds,
    }
    reply = records.pack_train_reply(
        records.pack_arrays(state),
        metrics,
        node.partition_id,
        node.trainer,
        node.model,
        label_histogram(data.train.y, data.spec.num_classes),
    )
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's local test split."""
    cfg, node, data = _prepare(context)
    model = _model(node, data, msg)
    result = evaluate(model, data.test, cfg.server.eval_batch_size, node.device)
    reply = records.pack_eval_reply(result.num_examples, result.loss, result.accuracy)
    return Message(reply, reply_to=msg)


def _split_plan(cfg: AppConfig, node: NodeSpec, config: ConfigRecord) -> SplitPlan:
    server_round, h = int(config[records.SERVER_ROUND]), cfg.heron  # type: ignore[arg-type]
    return SplitPlan(
        server_round=server_round,
        local_steps=int(config[records.LOCAL_STEPS]),  # type: ignore[arg-type]
        upload_every=int(config[records.UPLOAD_EVERY]),  # type: ignore[arg-type]
        batch_size=h.batch_size,
        lr=float(config[records.LR]),  # type: ignore[arg-type]
        optimizer=h.client_optimizer,
        data_seed=derive_seed(cfg.seed, PURPOSE_DATA_ORDER, server_round, node.partition_id),
        direction_seed=derive_seed(
            cfg.seed, PURPOSE_SPLIT_DIRECTIONS, server_round, node.partition_id
        ),
        directions=h.directions,
        smoothing=float(config[records.SMOOTHING]),  # type: ignore[arg-type]
        direction=h.direction,
        estimator=h.estimator,
        bn=h.bn,
    )


def _split_metrics(out: SplitResult) -> dict[str, float | int]:
    s = out.stats
    return {
        records.NUM_EXAMPLES: s.num_examples, "train-loss": s.train_loss,
        "forward-passes": s.forward_passes, "backward-passes": s.backward_passes,
        "peak-mem-mb": s.peak_mem_mb, "train-s": s.seconds, "steps": out.steps,
        "step-flops": out.step.flops,
        "step-peak-mem-mb": out.step.peak_mem_mb, "uploads": len(out.batch_sizes),
    }


@app.train("split")
def train_split(msg: Message, context: Context) -> Message:
    """HERON-SFL / CSE-FSL local phase; contract in :class:`strategies.heron.HeronSFL`."""
    cfg, node, data = _prepare(context)
    front_state, aux_state, config = records.unpack_split_message(msg.content)
    parts = build_split(node.model, data.spec, cfg.heron.cut_layer, cfg.heron.aux_pool)
    parts.front.load_state_dict(front_state)
    parts.aux.load_state_dict(aux_state)
    out = split_trainer(node.trainer).fit_split(
        parts.front, parts.aux, data.train, _split_plan(cfg, node, config), node.device
    )
    front = dict(parts.front.state_dict())
    if cfg.client.faulty(node.partition_id):
        front = inject(cfg.client.fault, front)
    reply = records.pack_split_reply(
        front, parts.aux.state_dict(), out.acts, out.labels,
        out.batch_sizes, _split_metrics(out),
        records.client_info(node.partition_id, node.trainer, node.model,
                            label_histogram(data.train.y, data.spec.num_classes)),
    )
    return Message(reply, reply_to=msg)
