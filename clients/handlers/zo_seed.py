"""zo-seed clients (``train.seeds``, ``evaluate.seeds``); contract in :mod:`fedapp.wire.zo_seed`."""

from __future__ import annotations

from flwr.app import Context, Message

from clients import whole_trainer
from clients.base import NodeSpec
from clients.handlers import common
from clients.plans import zo_seed_plan
from fedapp.config import AppConfig
from fedapp.task import zo
from fedapp.task.data import ClientData
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.wire import weights
from fedapp.wire import zo_seed as wire


def replica(
    cfg: AppConfig, node: NodeSpec, data: ClientData, down: wire.ZODownlink, context: Context
) -> SplitModel:
    """Catch this node's replica of the global model up to ``down.target_round``.

    From the stored replica (or θ^1, built from the shared init seed) by replaying the
    history; from ``zo-model`` only when the server bootstraps. Stored back in
    ``context.state``, so the local steps that follow never touch it.
    """
    common.require_trainer(node, frozenset({"zo"}), "zo-seed")
    common.require_global_model(cfg, node, "zo-seed")
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
    """Catch up by replay, H ZO steps, reply scalars only (``strategies.zo_seed``)."""
    cfg, node, data = common.prepare(context)
    down = wire.decode_down(msg.content)
    model = replica(cfg, node, data, down, context)
    plan = zo_seed_plan(cfg, node, down.server_round, down.seed_base, down.lr)
    stats = whole_trainer(node.trainer, wire.TRAIN_SEEDS).fit(model, data.train, plan, node.device)
    buffers = dict(model.named_buffers()) if cfg.zo.sync_buffers else None
    reply = wire.encode_train_reply(
        stats.zo_steps, cfg.zo.seed_source == "client", buffers, common.train_metrics(stats),
        common.client_info(node, data),
    )
    return Message(reply, reply_to=msg)


def evaluate_replica(msg: Message, context: Context) -> Message:
    """Catch up by replay, then evaluate the replica on the local test split."""
    cfg, node, data = common.prepare(context)
    model = replica(cfg, node, data, wire.decode_down(msg.content), context)
    result = evaluate(model, data.test, cfg.server.eval_batch_size, node.device)
    return Message(weights.encode_eval_reply(
        weights.EvalUp(result.num_examples, result.loss, result.accuracy)
    ), reply_to=msg)
