"""FedAvg, FedProx and FedGen clients: ``train`` on weights and ``evaluate`` locally."""

from __future__ import annotations

from flwr.app import Context, Message

from clients import TRAINERS, FitPlan, NodeSpec
from clients.base import LossFn, cross_entropy_loss
from clients.faults import inject
from clients.regularizers import LABEL_COUNTS, fedgen_loss
from fedapp.wire import fedgen as fedgen_wire
from fedapp.wire import weights as wire
from fedapp.wire.common import ClientInfo, unpack_arrays
from fedapp.config import AppConfig
from fedapp.handlers import common
from fedapp.task.data import ClientData
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.seeding import PURPOSE_FEDGEN_CLIENT, derive_seed


def _model(node: NodeSpec, data: ClientData, msg: Message) -> SplitModel:
    """This node's architecture holding the message's global weights."""
    model = build_model(node.model, data.spec)
    model.load_state_dict(unpack_arrays(msg.content))
    return model


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
    model = _model(node, data, msg)
    plan = common.fit_plan(cfg, node, msg)
    loss_fn = _loss_fn(cfg, node, msg, plan, model, data.spec.num_classes)
    stats = TRAINERS[node.trainer]().fit(model, data.train, plan, node.device, loss_fn=loss_fn)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if cfg.client.faulty(node.partition_id):
        state = inject(cfg.client.fault, state)
    reply = wire.encode_train_reply(
        state,
        common.fit_metrics(stats),
        ClientInfo(node.partition_id, node.trainer, node.model,
                   LABEL_COUNTS[cfg.fedgen.label_counts](data.train, plan, data.spec.num_classes)),
    )
    return Message(reply, reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's local test split."""
    cfg, node, data = common.prepare(context)
    model = _model(node, data, msg)
    result = evaluate(model, data.test, cfg.server.eval_batch_size, node.device)
    reply = wire.encode_eval_reply(wire.EvalUp(result.num_examples, result.loss, result.accuracy))
    return Message(reply, reply_to=msg)
