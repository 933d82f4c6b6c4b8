"""FedZGE black-box clients (``train.local``, ``query.logits``, ``train.distill``).

Contract in :class:`strategies.fedzge.FedZGE`.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from clients import NodeSpec
from clients.distill import (
    accuracy,
    distill_private,
    local_plan,
    query_answer,
    train_private,
)
from clients.faults import inject
from fedapp import records
from fedapp.config import AppConfig
from fedapp.handlers import common
from fedapp.task.data import ClientData, load_server_test
from fedapp.task.models import SplitModel, build_model
from fedapp.task.seeding import PURPOSE_DATA_ORDER, PURPOSE_INIT, derive_seed


def _private_model(
    cfg: AppConfig, node: NodeSpec, context: Context, data: ClientData
) -> SplitModel:
    """This node's persistent private model: from ``context.state``, or freshly initialised."""
    model = build_model(
        node.model, data.spec, seed=derive_seed(cfg.seed, PURPOSE_INIT, node.partition_id + 1)
    )
    saved = records.load_state(context.state, records.FEDZGE_MODEL)
    if saved is not None:
        model.load_state_dict(saved)
    return model


def _private_accuracy(
    cfg: AppConfig, node: NodeSpec, data: ClientData, model: SplitModel, server_round: int
) -> dict[str, float]:
    """Accuracy on the global test set and on the local split (``-1``: not measured)."""
    when = cfg.fedzge.client_eval
    measure = when == "every" or (when == "final" and server_round == cfg.num_server_rounds)
    test = load_server_test(cfg.data, cfg.seed)[0] if measure else None
    size, device = cfg.server.eval_batch_size, node.device
    return {
        records.ACC_GLOBAL: accuracy(model, test, size, device),
        records.ACC_LOCAL: accuracy(model, data.test if measure else None, size, device),
    }


def train_local(msg: Message, context: Context) -> Message:
    """FedZGE step 1: E1 epochs on the private model, which stays in ``context.state``."""
    cfg, node, data = common.prepare(context)
    model = _private_model(cfg, node, context, data)
    server_round = int(records.round_config(msg.content).get(records.SERVER_ROUND, 1))  # type: ignore[arg-type]
    seed = derive_seed(cfg.seed, PURPOSE_DATA_ORDER, server_round, node.partition_id)
    stats = train_private(model, data.train, local_plan(cfg, server_round, seed), node.device)
    records.save_state(context.state, records.FEDZGE_MODEL, model.state_dict())
    metrics = {
        records.NUM_EXAMPLES: stats.num_examples,
        "train-loss": stats.train_loss,
        "train-s": stats.seconds,
        **_private_accuracy(cfg, node, data, model, server_round),
    }
    return Message(records.pack_metrics(metrics, records.LOCAL_METRICS), reply_to=msg)


def query_logits(msg: Message, context: Context) -> Message:
    """FedZGE step 4: logits of x and its q perturbed copies; x is kept for the local KD."""
    cfg, node, data = common.prepare(context)
    model = _private_model(cfg, node, context, data)
    x, perturbed, config = records.unpack_query(msg.content)
    logits = query_answer(
        model, x, perturbed, int(config[records.NUM_DIRECTIONS]),  # type: ignore[arg-type]
        int(config.get(records.QUERY_SEED, 0)), float(config[records.SMOOTHING]),  # type: ignore[arg-type]
        node.device, cfg.fedzge.answer_bn,
    )
    if cfg.client.faulty(node.partition_id):
        logits = inject(cfg.client.fault, {records.LOGITS: logits})[records.LOGITS]
    round_tag = torch.tensor([int(config.get(records.SERVER_ROUND, 0))])  # type: ignore[arg-type]
    records.save_state(
        context.state, records.FEDZGE_INPUTS, {records.X: x, records.INPUT_ROUND: round_tag}
    )
    return Message(records.pack_logits(logits, len(data.train)), reply_to=msg)


def train_distill(msg: Message, context: Context) -> Message:
    """FedZGE step 7: E3 KD steps on the kept x towards the ensemble logits ℓ̄(x)."""
    cfg, node, data = common.prepare(context)
    model = _private_model(cfg, node, context, data)
    soft, config = records.unpack_distill(msg.content)
    kept = records.load_state(context.state, records.FEDZGE_INPUTS)
    server_round = int(config.get(records.SERVER_ROUND, 0))  # type: ignore[arg-type]
    if kept is None or int(kept[records.INPUT_ROUND][0]) != server_round:
        raise RuntimeError(f"train.distill for round {server_round} without that round's query")
    loss = distill_private(
        model, kept[records.X], soft, float(config[records.TEMPERATURE]),  # type: ignore[arg-type]
        int(config[records.STEPS]), cfg.fedzge.client_lr, node.device,  # type: ignore[arg-type]
        cfg.fedzge.client_kd_bn,
    )
    records.save_state(context.state, records.FEDZGE_MODEL, model.state_dict())
    metrics = {
        records.NUM_EXAMPLES: len(data.train),
        records.DISTILL_LOSS: loss,
        **_private_accuracy(cfg, node, data, model, server_round),
    }
    return Message(records.pack_metrics(metrics, records.DISTILL_METRICS), reply_to=msg)
