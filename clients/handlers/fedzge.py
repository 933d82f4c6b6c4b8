"""FedZGE black-box clients (``train.local``, ``query.logits``, ``train.distill``).

Contract in :mod:`fedapp.wire.fedzge`; the private model never leaves ``context.state``.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from clients import whole_trainer
from clients.base import NodeSpec
from clients.fedzge import accuracy, distill_private, local_update, query_answer
from clients.handlers import common
from clients.plans import fedzge_plan
from fedapp.config import AppConfig
from fedapp.task.data import ClientData, load_server_test
from fedapp.task.models import SplitModel, build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.wire import fedzge as wire
from fedapp.wire.common import load_state, save_state, server_round

TRAINERS = frozenset({"fo"})  # the private model trains first-order (official client.py)


def _private_model(
    cfg: AppConfig, node: NodeSpec, context: Context, data: ClientData
) -> SplitModel:
    """This node's persistent private model: from ``context.state``, or freshly initialised."""
    common.require_trainer(node, TRAINERS, "fedzge")
    model = build_model(
        node.model, data.spec, seed=derive_seed(cfg.seed, PURPOSE_INIT, node.partition_id + 1)
    )
    saved = load_state(context.state, wire.FEDZGE_MODEL)
    if saved is not None:
        model.load_state_dict(saved)
    return model


def _private_accuracy(
    cfg: AppConfig, node: NodeSpec, data: ClientData, model: SplitModel, rnd: int
) -> wire.PrivateAccuracy:
    """Accuracy on the global test set and on the local split (``-1``: not measured)."""
    when = cfg.fedzge.client_eval
    measure = when == "every" or (when == "final" and rnd == cfg.num_server_rounds)
    test = load_server_test(cfg.data, cfg.seed)[0] if measure else None
    size, device = cfg.server.eval_batch_size, node.device
    return wire.PrivateAccuracy(
        accuracy(model, test, size, device),
        accuracy(model, data.test if measure else None, size, device),
    )


def train_local(msg: Message, context: Context) -> Message:
    """Step 1: E1 epochs on the private model, which stays in ``context.state``."""
    cfg, node, data = common.prepare(context)
    model = _private_model(cfg, node, context, data)
    rnd = server_round(msg.content)
    stats = local_update(model, data.train, fedzge_plan(cfg, node, rnd), node.device,
                         whole_trainer(node.trainer, wire.TRAIN_LOCAL))
    save_state(context.state, wire.FEDZGE_MODEL, model.state_dict())
    up = wire.LocalUp(stats.num_examples, stats.train_loss, stats.seconds,
                      _private_accuracy(cfg, node, data, model, rnd))
    return Message(wire.encode_local_reply(up), reply_to=msg)


def query_logits(msg: Message, context: Context) -> Message:
    """Step 4: logits of x and its q perturbed copies; x is kept for the local KD."""
    cfg, node, data = common.prepare(context)
    model = _private_model(cfg, node, context, data)
    down = wire.decode_query(msg.content)
    logits = query_answer(model, down.x, down.perturbed, down.num_directions,
                          down.seed if down.seed is not None else 0, down.smoothing, node.device,
                          cfg.fedzge.answer_bn)
    kept = {wire.X: down.x, wire.INPUT_ROUND: torch.tensor([down.server_round])}
    save_state(context.state, wire.FEDZGE_INPUTS, kept)
    return Message(wire.encode_logits(wire.LogitsUp(logits, len(data.train))), reply_to=msg)


def train_distill(msg: Message, context: Context) -> Message:
    """Step 7: E3 KD steps on the kept x towards the ensemble logits ℓ̄(x)."""
    cfg, node, data = common.prepare(context)
    model = _private_model(cfg, node, context, data)
    down = wire.decode_distill(msg.content)
    kept = load_state(context.state, wire.FEDZGE_INPUTS)
    if kept is None or int(kept[wire.INPUT_ROUND][0]) != down.server_round:
        raise RuntimeError(
            f"train.distill for round {down.server_round} without that round's query"
        )
    loss = distill_private(model, kept[wire.X], down.soft_labels, down.temperature, down.steps,
                           cfg.fedzge.client_lr, node.device, cfg.fedzge.client_kd_bn)
    save_state(context.state, wire.FEDZGE_MODEL, model.state_dict())
    up = wire.DistillUp(len(data.train), loss,
                        _private_accuracy(cfg, node, data, model, down.server_round))
    return Message(wire.encode_distill_reply(up), reply_to=msg)
