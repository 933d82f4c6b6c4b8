"""The one ClientApp: thin handlers that decode, delegate to a trainer, encode.

Every call validates the run config and this node's node-config, so a bad
value fails the call with a one-line error reply instead of training on it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from clients import (
    TRAINERS,
    FitPlan,
    FitStats,
    NodeSpec,
    SplitPlan,
    SplitResult,
    ZerothOrderTrainer,
    plan_for,
    resolve_node,
    split_trainer,
)
from clients.base import LossFn, cross_entropy_loss
from clients.distill import (
    accuracy,
    distill_private,
    local_plan,
    private_model_name,
    query_answer,
    train_private,
)
from clients.faults import inject
from clients.regularizers import LABEL_COUNTS, fedgen_loss
from fedapp import records
from fedapp.config import AppConfig, load_config, load_node_config
from fedapp.task.data import ClientData, load_client_data, load_server_test
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task import zo
from fedapp.task.fedgen import PURPOSE_FEDGEN_CLIENT
from fedapp.task.partition import label_histogram
from fedapp.task.seeding import (
    PURPOSE_DATA_ORDER,
    PURPOSE_INIT,
    PURPOSE_SPLIT_DIRECTIONS,
    derive_seed,
)
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
    plan = FitPlan(
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
    return plan_for(plan, cfg, node)  # zo: the zo.* settings and this round's seeds


def _metrics(stats: FitStats) -> dict[str, float | int]:
    return {
        records.NUM_EXAMPLES: stats.num_examples,
        "train-loss": stats.train_loss,
        "forward-passes": stats.forward_passes,
        "backward-passes": stats.backward_passes,
        "peak-mem-mb": stats.peak_mem_mb,
        "train-s": stats.seconds,
    }


def _loss_fn(
    cfg: AppConfig, node: NodeSpec, msg: Message, plan: FitPlan, model: SplitModel, classes: int
) -> LossFn:
    """The plain objective, or FedGen's regularised one when the message carries a generator."""
    rnd = records.unpack_fedgen(msg.content)
    if rnd is None:
        return cross_entropy_loss
    seed = derive_seed(cfg.seed, PURPOSE_FEDGEN_CLIENT, plan.server_round, node.partition_id)
    return fedgen_loss(rnd, cfg.fedgen, classes, model.latent_dim, plan.batch_size, seed)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local update with this node's trainer; reply weights, metrics and label counts."""
    cfg, node, data = _prepare(context)
    model = _model(node, data, msg)
    plan = _plan(cfg, node, msg)
    loss_fn = _loss_fn(cfg, node, msg, plan, model, data.spec.num_classes)
    stats = TRAINERS[node.trainer]().fit(model, data.train, plan, node.device, loss_fn=loss_fn)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if cfg.client.faulty(node.partition_id):
        state = inject(cfg.client.fault, state)
    reply = records.pack_train_reply(
        records.pack_arrays(state),
        _metrics(stats),
        node.partition_id,
        node.trainer,
        node.model,
        LABEL_COUNTS[cfg.fedgen.label_counts](data.train, plan, data.spec.num_classes),
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


def _zo_replica(
    cfg: AppConfig, node: NodeSpec, data: ClientData, down: records.ZODownlink, context: Context
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
    saved, synced = records.load_zo_replica(context.state), 1
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
    records.save_zo_replica(context.state, model.state_dict(), synced)
    return model


@app.train("seeds")
def train_seeds(msg: Message, context: Context) -> Message:
    """zo-seed: catch up by replay, H ZO steps, reply scalars only (``strategies.zo_seed``)."""
    cfg, node, data = _prepare(context)
    down = records.unpack_zo_down(msg.content)
    model = _zo_replica(cfg, node, data, down, context)
    plan = replace(_plan(cfg, node, msg), seed_base=down.seed_base, lr=down.lr)  # type: ignore[type-var]
    trainer = ZerothOrderTrainer()
    stats = trainer.fit(model, data.train, plan, node.device)
    buffers = dict(model.named_buffers()) if cfg.zo.sync_buffers else None
    reply = records.pack_zo_train_reply(
        trainer.steps, cfg.zo.seed_source == "client", buffers, _metrics(stats),
        node.partition_id, node.trainer, node.model,
        label_histogram(data.train.y, data.spec.num_classes),
    )
    return Message(reply, reply_to=msg)


@app.evaluate("seeds")
def evaluate_seeds(msg: Message, context: Context) -> Message:
    """zo-seed: catch up by replay, then evaluate the replica on the local test split."""
    cfg, node, data = _prepare(context)
    model = _zo_replica(cfg, node, data, records.unpack_zo_down(msg.content), context)
    result = evaluate(model, data.test, cfg.server.eval_batch_size, node.device)
    return Message(records.pack_eval_reply(result.num_examples, result.loss, result.accuracy), reply_to=msg)


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
    return _metrics(out.stats) | {
        "steps": out.steps,
        "step-flops": out.step.flops,
        "step-peak-mem-mb": out.step.peak_mem_mb,
        "uploads": len(out.batch_sizes),
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
# -- FedZGE (contract in strategies.fedzge.FedZGE) -------------------------------------------


def _private_model(cfg: AppConfig, context: Context, data: ClientData) -> SplitModel:
    """This node's persistent private model: from ``context.state``, or freshly initialised."""
    node_cfg = load_node_config(context.node_config)
    model = build_model(
        private_model_name(node_cfg, cfg),
        data.spec,
        seed=derive_seed(cfg.seed, PURPOSE_INIT, node_cfg.partition_id + 1),
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


@app.train("local")
def fedzge_train_local(msg: Message, context: Context) -> Message:
    """FedZGE step 1: E1 epochs on the private model, which stays in ``context.state``."""
    cfg, node, data = _prepare(context)
    model = _private_model(cfg, context, data)
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


@app.query("logits")
def fedzge_query_logits(msg: Message, context: Context) -> Message:
    """FedZGE step 4: logits of x and its q perturbed copies; x is kept for the local KD."""
    cfg, node, data = _prepare(context)
    model = _private_model(cfg, context, data)
    x, perturbed, config = records.unpack_query(msg.content)
    logits = query_answer(
        model, x, perturbed, int(config[records.NUM_DIRECTIONS]),  # type: ignore[arg-type]
        int(config.get(records.QUERY_SEED, 0)), float(config[records.SMOOTHING]),  # type: ignore[arg-type]
        node.device,
    )
    if cfg.client.faulty(node.partition_id):
        logits = inject(cfg.client.fault, {records.LOGITS: logits})[records.LOGITS]
    round_tag = torch.tensor([int(config.get(records.SERVER_ROUND, 0))])  # type: ignore[arg-type]
    records.save_state(
        context.state, records.FEDZGE_INPUTS, {records.X: x, records.INPUT_ROUND: round_tag}
    )
    return Message(records.pack_logits(logits, len(data.train)), reply_to=msg)


@app.train("distill")
def fedzge_train_distill(msg: Message, context: Context) -> Message:
    """FedZGE step 7: E3 KD steps on the kept x towards the ensemble logits ℓ̄(x)."""
    cfg, node, data = _prepare(context)
    model = _private_model(cfg, context, data)
    soft, config = records.unpack_distill(msg.content)
    kept = records.load_state(context.state, records.FEDZGE_INPUTS)
    server_round = int(config.get(records.SERVER_ROUND, 0))  # type: ignore[arg-type]
    if kept is None or int(kept[records.INPUT_ROUND][0]) != server_round:
        raise RuntimeError(f"train.distill for round {server_round} without that round's query")
    loss = distill_private(
        model, kept[records.X], soft, float(config[records.TEMPERATURE]),  # type: ignore[arg-type]
        int(config[records.STEPS]), cfg.fedzge.client_lr, node.device,  # type: ignore[arg-type]
    )
    records.save_state(context.state, records.FEDZGE_MODEL, model.state_dict())
    metrics = {
        records.NUM_EXAMPLES: len(data.train),
        records.DISTILL_LOSS: loss,
        **_private_accuracy(cfg, node, data, model, server_round),
    }
    return Message(records.pack_metrics(metrics, records.DISTILL_METRICS), reply_to=msg)
