"""FedAvg, FedProx and FedGen clients: ``train`` on weights and ``evaluate`` locally.

Contract in :mod:`fedapp.wire.weights` and :mod:`fedapp.wire.fedgen`.
"""

from __future__ import annotations

from flwr.app import Context, Message

from clients import whole_trainer
from clients.base import FitPlan, LossFn, NodeSpec, cross_entropy_loss
from clients.fedgen import LABEL_COUNTS, fedgen_loss
from clients.handlers import common
from clients.plans import fit_plan
from fedapp.config import AppConfig
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.seeding import PURPOSE_FEDGEN_CLIENT, derive_seed
from fedapp.wire import fedgen as fedgen_wire
from fedapp.wire import weights as wire


def _loss_fn(
    cfg: AppConfig, node: NodeSpec, msg: Message, plan: FitPlan, model: SplitModel, classes: int
) -> LossFn:
    """The plain objective, or FedGen's regularised one when the message carries a generator."""
    rnd = fedgen_wire.decode_down(msg.content)
    if rnd is None:
        return cross_entropy_loss
    seed = derive_seed(cfg.seed, PURPOSE_FEDGEN_CLIENT, plan.server_round, node.partition_id)
    return fedgen_loss(rnd, cfg.fedgen, classes, model.latent_dim, plan.batch_size, seed)


def train(msg: Message, context: Context) -> Message:
    """Local update with this node's trainer; reply weights, metrics and label counts."""
    cfg, node, data = common.prepare(context)
    common.require_global_model(cfg, node, cfg.strategy)
    trainer = whole_trainer(node.trainer, wire.TRAIN)
    down = wire.decode_down(msg.content)
    model = build_model(node.model, data.spec)
    model.load_state_dict(down.state)
    plan = fit_plan(cfg, node, down.server_round, down.proximal_mu)
    loss_fn = _loss_fn(cfg, node, msg, plan, model, data.spec.num_classes)
    stats = trainer.fit(
        model, data.train, plan, node.device, loss_fn=loss_fn
    )
    counts = LABEL_COUNTS[cfg.fedgen.label_counts](data.train, plan, data.spec.num_classes)
    reply = wire.encode_train_reply(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        common.train_metrics(stats), common.client_info(node, data, counts),
    )
    return Message(reply, reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's local test split."""
    cfg, node, data = common.prepare(context)
    common.require_global_model(cfg, node, cfg.strategy)
    model = build_model(node.model, data.spec)
    model.load_state_dict(wire.decode_down(msg.content).state)
    result = evaluate(model, data.test, cfg.server.eval_batch_size, node.device)
    return Message(wire.encode_eval_reply(
        wire.EvalUp(result.num_examples, result.loss, result.accuracy)
    ), reply_to=msg)
