"""HERON-SFL / CSE-FSL clients (``train.split``); contract in :mod:`fedapp.wire.split`."""

from __future__ import annotations

from flwr.app import Context, Message

from clients import split_trainer
from clients.handlers import common
from clients.plans import split_plan
from fedapp.task.split import build_split
from fedapp.wire import split as wire


def train(msg: Message, context: Context) -> Message:
    """h local steps on θ_c, θ_a with this node's split trainer; reply parts and smashed data."""
    cfg, node, data = common.prepare(context)
    common.require_global_model(cfg, node, "heron-sfl")
    trainer = split_trainer(node.trainer)
    down = wire.decode_down(msg.content)
    parts = build_split(node.model, data.spec, cfg.heron.cut_layer, cfg.heron.aux_pool)
    parts.front.load_state_dict(down.front)
    parts.aux.load_state_dict(down.aux)
    plan = split_plan(cfg, node, down.server_round, down.local_steps, down.upload_every,
                      down.smoothing, down.lr)
    out = trainer.fit_split(parts.front, parts.aux, data.train, plan,
                                                node.device)
    metrics = wire.SplitMetrics(common.train_metrics(out.stats), out.steps, out.step.flops,
                                out.step.peak_mem_mb, len(out.batch_sizes))
    reply = wire.encode_up(
        dict(parts.front.state_dict()), parts.aux.state_dict(), out.acts, out.labels,
        out.batch_sizes, metrics, common.client_info(node, data),
    )
    return Message(reply, reply_to=msg)
