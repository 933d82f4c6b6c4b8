"""zo-seed clients (``train.seeds``, ``evaluate.seeds``); contract in :mod:`fedapp.wire.zo_seed`."""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from clients import replicas, whole_trainer
from clients.base import NodeSpec
from clients.handlers import common
from clients.plans import zo_seed_plan
from clients.replicas import ReplicaStore
from fedapp.config import AppConfig
from fedapp.task import zo, zo_history
from fedapp.task.data import ClientData
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.wire import weights
from fedapp.wire import zo_seed as wire


def replica(
    cfg: AppConfig, node: NodeSpec, data: ClientData, down: wire.ZODownlink, context: Context,
    store: ReplicaStore | None = None,
) -> SplitModel:
    """Catch this node's replica of the global model up to ``down.target_round``.

    From the replica the node last held (shared by key in :mod:`clients.replicas`), or
    θ^1 built from the shared init seed, by replaying the history; from ``zo-model``
    only when the server bootstraps. ``context.state`` keeps only the round and key,
    so memory does not grow with the number of nodes; the local steps that follow
    train the returned model, never the stored replica.
    """
    common.require_trainer(node, frozenset({"zo"}), "zo-seed")
    common.require_global_model(cfg, node, "zo-seed")
    store = store or replicas.STORE
    model = build_model(node.model, data.spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    key = zo_history.config_key(node.model, derive_seed(cfg.seed, PURPOSE_INIT), repr(data.spec))
    space, synced = f"run-{context.run_id}-{key[:12]}", 1
    if down.model is not None:
        model.load_state_dict(down.model)
        synced, key = down.target_round, zo_history.initial_key(down.model, down.target_round)
    elif (held := wire.load_sync(context.state)) is not None and held[2] != key:
        saved = store.get(*held)
        if saved is None:
            raise ValueError(f"the replica of round {held[1]} is not on this machine; "
                             "the server resynchronises this node")
        model.load_state_dict(saved)
        space, synced, key = held
    params = zo.trainable(model)
    for entry in down.history:
        if entry.round >= synced:
            synced = zo.replay_rounds_(params, [entry], synced, cfg.zo.direction)
            key = zo_history.next_key(key, entry)
    if synced != down.target_round:
        raise ValueError(f"replica reached round {synced}, server expects {down.target_round}")
    if down.buffers:
        model.load_state_dict(down.buffers, strict=False)
    store.put(space, synced, key, model.state_dict())
    if down.keep_rounds > 0:
        store.prune(space, down.target_round - down.keep_rounds)
    wire.save_sync(context.state, space, synced, key)
    return model


def held_replica(
    context: Context, store: ReplicaStore | None = None
) -> tuple[dict[str, torch.Tensor], int] | None:
    """The replica this node holds and its round (tests, benchmarks), if it has one."""
    held = wire.load_sync(context.state)
    if held is None:
        return None
    saved = (store or replicas.STORE).get(*held)
    return None if saved is None else (saved, held[1])


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
