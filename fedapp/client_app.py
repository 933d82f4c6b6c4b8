"""The one ClientApp: thin handlers that decode, delegate to a trainer, encode.

Every call validates the run config and this node's node-config, so a bad
value fails the call with a one-line error reply instead of training on it.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import TRAINERS, FitPlan, NodeSpec, resolve_node
from clients.base import LossFn, cross_entropy_loss
from clients.faults import inject
from clients.regularizers import LABEL_COUNTS, fedgen_loss
from fedapp import records
from fedapp.config import AppConfig, load_config, load_node_config
from fedapp.task.data import ClientData, load_client_data
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.fedgen import PURPOSE_FEDGEN_CLIENT
from fedapp.task.seeding import PURPOSE_DATA_ORDER, derive_seed

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
