"""HERON-SFL / CSE-FSL clients (``train.split``); contract in :class:`strategies.heron.HeronSFL`."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message

from clients import NodeSpec, SplitPlan, SplitResult, split_trainer
from clients.faults import inject
from fedapp import records
from fedapp.config import AppConfig
from fedapp.handlers import common
from fedapp.task.partition import label_histogram
from fedapp.task.seeding import PURPOSE_DATA_ORDER, PURPOSE_SPLIT_DIRECTIONS, derive_seed
from fedapp.task.split import build_split


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
    return common.fit_metrics(out.stats) | {
        "steps": out.steps,
        "step-flops": out.step.flops,
        "step-peak-mem-mb": out.step.peak_mem_mb,
        "uploads": len(out.batch_sizes),
    }


def train(msg: Message, context: Context) -> Message:
    """HERON-SFL / CSE-FSL local phase; contract in :class:`strategies.heron.HeronSFL`."""
    cfg, node, data = common.prepare(context)
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
