"""zo-seed clients (``train.seeds``, ``evaluate.seeds``).

Contract in :class:`strategies.zo_seed.ZOSeed`.
"""

from __future__ import annotations

from dataclasses import replace

from flwr.app import Context, Message

from clients import NodeSpec, ZerothOrderTrainer
from fedapp.wire import weights
from fedapp.wire import zo_seed as wire
from fedapp.wire.common import ClientInfo
from fedapp.config import AppConfig
from fedapp.handlers import common
from fedapp.task import zo
from fedapp.task.data import ClientData
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.partition import label_histogram
from fedapp.task.seeding import PURPOSE_INIT, derive_seed


def replica(
    cfg: AppConfig, node: NodeSpec, data: ClientData, down: wire.ZODownlink, context: Context
) -> SplitModel:
    """Catch this node's replica of the global model up to ``down.target_round`` (zo-seed).

    From the stored replica (or θ^1, built from the shared init seed) by replaying the
    history; from ``zo-model`` only when the server bootstraps. Stored back in
    ``context.state``, so the local steps that follow never touch it.
    """
    if node.trainer != "zo" or node.model != cfg.model.name:
        raise ValueError(
            f"zo-seed needs trainer 'zo' and model {cfg.model.name!r} on every node; "
            f"this node has {node.trainer!r}, {node.model!r}"
        )
    model = build_model(node.model, data.spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    saved, synced = wire.load_replica(context.state), 1
    if down.model is not None:
        model.load_state_dict(down.model)
        synced = down.target_round
    elif saved is not None:
        model.load_state_dict(saved[0])
        synced = saved[1]
    synced = zo.replay_rounds_(zo.trainable(model), down.history, synced, cfg.zo.direction)
    if synced != down.target_round:
        raise ValueError(f"replica reached round {synced}, server expects {down.target_round}")
    if down.buffers:
        model.load_state_dict(down.buffers, strict=False)
    wire.save_replica(context.state, model.state_dict(), synced)
    return model


def train(msg: Message, context: Context) -> Message:
    """zo-seed: catch up by replay, H ZO steps, reply scalars only (``strategies.zo_seed``)."""
    cfg, node, data = common.prepare(context)
    down = wire.decode_down(msg.content)
    model = replica(cfg, node, data, down, context)
    plan = replace(common.fit_plan(cfg, node, msg), seed_base=down.seed_base, lr=down.lr)  # type: ignore[type-var]
    trainer = ZerothOrderTrainer()
    stats = trainer.fit(model, data.train, plan, node.device)
    buffers = dict(model.named_buffers()) if cfg.zo.sync_buffers else None
    reply = wire.encode_train_reply(
        tuple(trainer.steps), cfg.zo.seed_source == "client", buffers, common.fit_metrics(stats),
        ClientInfo(node.partition_id, node.trainer, node.model,
                   label_histogram(data.train.y, data.spec.num_classes)),
    )
    return Message(reply, reply_to=msg)


def evaluate_replica(msg: Message, context: Context) -> Message:
    """zo-seed: catch up by replay, then evaluate the replica on the local test split."""
    cfg, node, data = common.prepare(context)
    model = replica(cfg, node, data, wire.decode_down(msg.content), context)
    result = evaluate(model, data.test, cfg.server.eval_batch_size, node.device)
    reply = weights.encode_eval_reply(
        weights.EvalUp(result.num_examples, result.loss, result.accuracy)
    )
    return Message(reply, reply_to=msg)
