"""HERON-SFL / CSE-FSL clients (``train.split``); contract in :class:`strategies.heron.HeronSFL`."""

from __future__ import annotations

from flwr.app import Context, Message

from clients import NodeSpec, SplitPlan, SplitResult, split_trainer
from clients.faults import inject
from fedapp.wire import split as wire
from fedapp.wire.common import ClientInfo
from fedapp.config import AppConfig
from fedapp.handlers import common
from fedapp.task.partition import label_histogram
from fedapp.task.seeding import PURPOSE_DATA_ORDER, PURPOSE_SPLIT_DIRECTIONS, derive_seed
from fedapp.task.split import build_split


def _split_plan(cfg: AppConfig, node: NodeSpec, down: wire.SplitDown) -> SplitPlan:
    h = cfg.heron
    return SplitPlan(
        server_round=down.server_round,
        local_steps=down.local_steps,
        upload_every=down.upload_every,
        batch_size=h.batch_size,
        lr=down.lr,
        optimizer=h.client_optimizer,
        data_seed=derive_seed(cfg.seed, PURPOSE_DATA_ORDER, down.server_round, node.partition_id),
        direction_seed=derive_seed(
            cfg.seed, PURPOSE_SPLIT_DIRECTIONS, down.server_round, node.partition_id
        ),
        directions=h.directions,
        smoothing=down.smoothing,
        direction=h.direction,
        estimator=h.estimator,
        bn=h.bn,
    )


def _split_metrics(out: SplitResult) -> wire.SplitMetrics:
    return wire.SplitMetrics(common.fit_metrics(out.stats), out.steps, out.step.flops,
                             out.step.peak_mem_mb, len(out.batch_sizes))


def train(msg: Message, context: Context) -> Message:
    """HERON-SFL / CSE-FSL local phase; contract in :class:`strategies.heron.HeronSFL`."""
    cfg, node, data = common.prepare(context)
    down = wire.decode_down(msg.content)
    parts = build_split(node.model, data.spec, cfg.heron.cut_layer, cfg.heron.aux_pool)
    parts.front.load_state_dict(down.front)
    parts.aux.load_state_dict(down.aux)
    out = split_trainer(node.trainer).fit_split(
        parts.front, parts.aux, data.train, _split_plan(cfg, node, down), node.device
    )
    front = dict(parts.front.state_dict())
    if cfg.client.faulty(node.partition_id):
        front = inject(cfg.client.fault, front)
    reply = wire.encode_up(
        front, parts.aux.state_dict(), out.acts, out.labels,
        out.batch_sizes, _split_metrics(out),
        ClientInfo(node.partition_id, node.trainer, node.model,
                   label_histogram(data.train.y, data.spec.num_classes)),
    )
    return Message(reply, reply_to=msg)
