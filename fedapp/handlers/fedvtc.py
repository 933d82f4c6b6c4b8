"""FedVTC clients (``train.stats``, ``train.decoder``, ``train.finetune``, ``evaluate.vtc``).

Our reading of Niu, Dong, Qin, arXiv 2508.01669; contract in :class:`strategies.fedvtc.FedVTC`.
"""

from __future__ import annotations

import dataclasses

from flwr.app import Context, Message

from clients import NodeSpec, vtc
from clients.faults import inject
from fedapp.wire import fedvtc as wire
from fedapp.wire.common import ClientInfo, load_state, pack_arrays, save_state
from fedapp.config import AppConfig
from fedapp.handlers import common
from fedapp.task.data import ClientData, load_server_test
from fedapp.task.evaluate import evaluate
from fedapp.task.models import SplitModel, build_model
from fedapp.task.partition import label_histogram
from fedapp.task.seeding import PURPOSE_INIT, PURPOSE_VTC_NOISE, derive_seed
from fedapp.task.stats import FeatureStats
from fedapp.task.vtc import VTCDecoder, build_decoder


def _vtc_prepare(
    context: Context, msg: Message
) -> tuple[AppConfig, NodeSpec, ClientData, SplitModel, vtc.VTCPlan]:
    """Config, node, data, this node's own classifier from ``context.state``, plan."""
    cfg, node, data = common.prepare(context)
    seed = derive_seed(cfg.seed, PURPOSE_INIT, node.partition_id)
    model = build_model(node.model, data.spec, seed=seed)
    if model.latent_dim != cfg.fedvtc.latent_dim:
        raise ValueError(
            f"model {node.model!r} has latent size {model.latent_dim}, fedvtc.latent-dim is "
            f"{cfg.fedvtc.latent_dim}: give clients vtc-cnn-* models (model.clients, as in "
            "fedapp/presets/fedvtc-digits.toml)"
        )
    if (state := load_state(context.state, wire.VTC_STATE_CLASSIFIER)) is not None:
        model.load_state_dict(state)
    f = cfg.fedvtc
    fit = common.fit_plan(cfg, node, msg)
    plan = vtc.VTCPlan(
        fit=fit, lambda_kl=f.lambda_kl, lambda_dm=f.lambda_dm, lambda_syn=f.lambda_syn,
        delta=f.delta, decoder_lr=f.decoder_lr, decoder_epochs=f.decoder_epochs,
        synthetic_batch=f.synthetic_batch, finetune_steps=f.finetune_steps, mix_real=f.mix_real,
        dm=f.dm, noise_seed=derive_seed(cfg.seed, PURPOSE_VTC_NOISE, fit.server_round,
                                        node.partition_id),
        max_grad_norm=f.max_grad_norm,
    )
    return cfg, node, data, model, plan


def _vtc_decoder(
    cfg: AppConfig, node: NodeSpec, data: ClientData, msg: Message, context: Context
) -> VTCDecoder:
    """ψ: the server's (shared decoder), else this node's own from ``context.state`` or new."""
    seed = derive_seed(cfg.seed, PURPOSE_INIT, node.partition_id, 1)
    decoder = build_decoder(cfg.fedvtc.latent_dim, data.spec, seed)
    received = wire.decode_down(msg.content).decoder
    state = received or load_state(context.state, wire.VTC_STATE_DECODER)
    if state is not None:
        decoder.load_state_dict(state)
    return decoder


def _global_stats(msg: Message) -> FeatureStats:
    stats = wire.decode_down(msg.content).global_stats
    if stats is None:
        raise ValueError(f"{msg.metadata.message_type} needs global-stats")
    return stats


def train_stats(msg: Message, context: Context) -> Message:
    """FedVTC steps 1-2: train the own classifier, reply per-class feature statistics."""
    cfg, node, data, model, plan = _vtc_prepare(context, msg)
    global_stats = wire.decode_down(msg.content).global_stats
    fit = vtc.train_classifier(model, data.train, plan, global_stats, node.device)
    save_state(context.state, wire.VTC_STATE_CLASSIFIER, model.state_dict())
    stats = vtc.feature_stats(model, data.train, data.spec.num_classes,
                              cfg.server.eval_batch_size, node.device)
    if cfg.client.faulty(node.partition_id):
        stats = FeatureStats(**inject(cfg.client.fault, dataclasses.asdict(stats)))
    reply = wire.encode_stats_reply(
        stats, common.fit_metrics(fit),
        ClientInfo(node.partition_id, node.trainer, node.model,
                   label_histogram(data.train.y, data.spec.num_classes)),
    )
    return Message(reply, reply_to=msg)


def train_decoder(msg: Message, context: Context) -> Message:
    """FedVTC step 4: train ψ with the classifier frozen; reply ψ when it is shared."""
    cfg, node, data, model, plan = _vtc_prepare(context, msg)
    decoder = _vtc_decoder(cfg, node, data, msg, context)
    opt_state = load_state(context.state, wire.VTC_STATE_DECODER_OPT)
    out, opt_state = vtc.train_decoder(model, decoder, data.train, _global_stats(msg), plan,
                                       opt_state, node.device)
    save_state(context.state, wire.VTC_STATE_DECODER, decoder.state_dict())
    save_state(context.state, wire.VTC_STATE_DECODER_OPT, opt_state)
    shared = pack_arrays(decoder.state_dict()) if cfg.fedvtc.share_decoder else None
    up = wire.DecoderUp(out.num_examples, out.vtc_loss, out.rec_loss, out.dm_loss, out.seconds,
                        shared)
    return Message(wire.encode_reply(up), reply_to=msg)


def train_finetune(msg: Message, context: Context) -> Message:
    """FedVTC step 5: fine-tune the whole classifier on ψ's synthetic images (and real data)."""
    cfg, node, data, model, plan = _vtc_prepare(context, msg)
    decoder = VTCDecoder(cfg.fedvtc.latent_dim, data.spec)
    state = load_state(context.state, wire.VTC_STATE_DECODER)
    if state is None:
        raise ValueError("train.finetune before train.decoder: this node has no decoder yet")
    decoder.load_state_dict(state)
    fit = vtc.finetune(model, decoder, data.train, _global_stats(msg), plan, node.device)
    save_state(context.state, wire.VTC_STATE_CLASSIFIER, model.state_dict())
    up = wire.FinetuneUp(fit.num_examples, fit.train_loss, fit.seconds)
    return Message(wire.encode_reply(up), reply_to=msg)


def evaluate_vtc(msg: Message, context: Context) -> Message:
    """This node's own classifier on the global test set and on its local test split."""
    cfg, node, data, model, _ = _vtc_prepare(context, msg)
    test, _ = load_server_test(cfg.data, cfg.seed)
    batch = cfg.server.eval_batch_size
    on_global = evaluate(model, test, batch, node.device)
    on_local = evaluate(model, data.test, batch, node.device)
    up = wire.EvalUp(on_global.num_examples, on_global.loss, on_global.accuracy,
                     on_local.loss, on_local.accuracy)
    return Message(wire.encode_reply(up), reply_to=msg)
