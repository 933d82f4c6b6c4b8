"""FedVTC clients (``train.stats``, ``train.decoder``, ``train.finetune``, ``evaluate.vtc``).

Our reading of Niu, Dong, Qin, arXiv 2508.01669; contract in :mod:`fedapp.wire.fedvtc`.
The classifier and the decoder stay in ``context.state``.
"""

from __future__ import annotations

from flwr.app import Context, Message

from clients import whole_trainer
from clients.base import NodeSpec
from clients.fedvtc import VTCPlan, feature_stats, finetune, train_classifier
from clients.fedvtc import train_decoder as train_vtc_decoder
from clients.handlers import common
from clients.plans import vtc_plan
from fedapp.config import AppConfig
from fedapp.task.data import ClientData, load_server_test
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.task.stats import FeatureStats
from fedapp.task.vtc import VTCDecoder, build_decoder
from fedapp.wire import fedvtc as wire
from fedapp.wire.common import load_state, pack_arrays, save_state

TRAINERS = frozenset({"fo"})  # classifier steps 1 and 5 are first-order


def _prepare(
    context: Context, down: wire.VTCDown
) -> tuple[AppConfig, NodeSpec, ClientData, SplitModel, VTCPlan]:
    """Config, node, data, this node's own classifier from ``context.state``, plan."""
    cfg, node, data = common.prepare(context)
    common.require_trainer(node, TRAINERS, "fedvtc")
    model = build_model(node.model, data.spec,
                        seed=derive_seed(cfg.seed, PURPOSE_INIT, node.partition_id))
    if model.latent_dim != cfg.fedvtc.latent_dim:
        raise ValueError(
            f"model {node.model!r} has latent size {model.latent_dim}, fedvtc.latent-dim is "
            f"{cfg.fedvtc.latent_dim}: give this node a vtc-cnn-* model (node-config model, or "
            "drop it to take the card's model.clients)"
        )
    if (state := load_state(context.state, wire.VTC_STATE_CLASSIFIER)) is not None:
        model.load_state_dict(state)
    return cfg, node, data, model, vtc_plan(cfg, node, down.server_round)


def _global_stats(msg: Message, down: wire.VTCDown) -> FeatureStats:
    if down.global_stats is None:
        raise ValueError(f"{msg.metadata.message_type} needs global-stats")
    return down.global_stats


def train_stats(msg: Message, context: Context) -> Message:
    """Steps 1-2: train the own classifier, reply per-class feature statistics."""
    down = wire.decode_down(msg.content)
    cfg, node, data, model, plan = _prepare(context, down)
    fit = train_classifier(model, data.train, plan, down.global_stats, node.device,
                           whole_trainer(node.trainer, wire.TRAIN_STATS))
    save_state(context.state, wire.VTC_STATE_CLASSIFIER, model.state_dict())
    stats = feature_stats(model, data.train, data.spec.num_classes,
                          cfg.server.eval_batch_size, node.device)
    reply = wire.encode_stats_reply(stats, common.train_metrics(fit),
                                    common.client_info(node, data))
    return Message(reply, reply_to=msg)


def train_decoder(msg: Message, context: Context) -> Message:
    """Step 4: train ψ with the classifier frozen; reply ψ when it is shared."""
    down = wire.decode_down(msg.content)
    cfg, node, data, model, plan = _prepare(context, down)
    decoder = build_decoder(cfg.fedvtc.latent_dim, data.spec,
                            derive_seed(cfg.seed, PURPOSE_INIT, node.partition_id, 1))
    state = down.decoder or load_state(context.state, wire.VTC_STATE_DECODER)  # shared, or own
    if state is not None:
        decoder.load_state_dict(state)
    opt_state = load_state(context.state, wire.VTC_STATE_DECODER_OPT)
    out, opt_state = train_vtc_decoder(model, decoder, data.train, _global_stats(msg, down),
                                       plan, opt_state, node.device)
    save_state(context.state, wire.VTC_STATE_DECODER, decoder.state_dict())
    save_state(context.state, wire.VTC_STATE_DECODER_OPT, opt_state)
    shared = pack_arrays(decoder.state_dict()) if cfg.fedvtc.share_decoder else None
    up = wire.DecoderUp(out.num_examples, out.vtc_loss, out.rec_loss, out.dm_loss, out.seconds,
                        shared)
    return Message(wire.encode_reply(up), reply_to=msg)


def train_finetune(msg: Message, context: Context) -> Message:
    """Step 5: fine-tune the whole classifier on ψ's synthetic images (and real data)."""
    down = wire.decode_down(msg.content)
    cfg, node, data, model, plan = _prepare(context, down)
    decoder = VTCDecoder(cfg.fedvtc.latent_dim, data.spec)
    state = load_state(context.state, wire.VTC_STATE_DECODER)
    if state is None:
        raise ValueError("train.finetune before train.decoder: this node has no decoder yet")
    decoder.load_state_dict(state)
    fit = finetune(model, decoder, data.train, _global_stats(msg, down), plan, node.device,
                   whole_trainer(node.trainer, wire.TRAIN_FINETUNE))
    save_state(context.state, wire.VTC_STATE_CLASSIFIER, model.state_dict())
    up = wire.FinetuneUp(fit.num_examples, fit.train_loss, fit.seconds)
    return Message(wire.encode_reply(up), reply_to=msg)


def evaluate_vtc(msg: Message, context: Context) -> Message:
    """This node's own classifier on the global test set and on its local test split."""
    cfg, node, data, model, _ = _prepare(context, wire.decode_down(msg.content))
    test, _ = load_server_test(cfg.data, cfg.seed)
    batch = cfg.server.eval_batch_size
    on_global = evaluate(model, test, batch, node.device)
    on_local = evaluate(model, data.test, batch, node.device)
    local = ((on_local.loss, on_local.accuracy) if on_local.num_examples
             else (wire.NOT_MEASURED, wire.NOT_MEASURED))  # no local test data
    up = wire.EvalUp(on_global.num_examples, on_global.loss, on_global.accuracy, *local)
    return Message(wire.encode_reply(up), reply_to=msg)
