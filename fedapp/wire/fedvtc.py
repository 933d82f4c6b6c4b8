"""The FedVTC protocol (``train.stats``, ``train.decoder``, ``train.finetune``, ``evaluate.vtc``).

Our reading of Niu, Dong, Qin, arXiv 2508.01669; contract of
docs/strategies/fedvtc.md (Wire contract). Server messages carry ``config``
{``server-round``} and, when given, the pooled ``global-stats`` and the shared
``decoder``. Classifier weights never travel: clients reply per-class feature
statistics (``stats``), the decoder when it is shared, and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedapp.task.stats import FeatureStats
from fedapp.wire.common import (
    CLIENT_INFO,
    DM_LOSS,
    EVAL_ACC,
    EVAL_ACC_LOCAL,
    EVAL_LOSS,
    EVAL_LOSS_LOCAL,
    FINETUNE_LOSS,
    METRICS,
    NUM_EXAMPLES,
    REC_LOSS,
    TRAIN_METRICS,
    TRAIN_S,
    VTC_LOSS,
    ClientInfo,
    TrainMetrics,
    config_message,
    decode_client_info,
    get_float,
    metrics_record,
    screen_arrays,
    screen_metrics,
    server_round,
    train_reply,
    unpack_arrays,
)

TRAIN_STATS = "train.stats"
TRAIN_DECODER = "train.decoder"
TRAIN_FINETUNE = "train.finetune"
EVALUATE_VTC = "evaluate.vtc"

VTC_STATS = "stats"  # client -> server: per-class mean, var (C, p), count (C,)
VTC_GLOBAL_STATS = "global-stats"  # server -> client: pooled mean, var, count
VTC_DECODER = "decoder"  # the decoder ψ's state dict, both ways when shared
MEAN, VAR, COUNT = "mean", "var", "count"
STATS_KEYS = (MEAN, VAR, COUNT)

VTC_DECODER_METRICS = (NUM_EXAMPLES, VTC_LOSS, REC_LOSS, DM_LOSS, TRAIN_S)
VTC_FINETUNE_METRICS = (NUM_EXAMPLES, FINETUNE_LOSS, TRAIN_S)
VTC_EVAL_METRICS = (NUM_EXAMPLES, EVAL_LOSS, EVAL_ACC, EVAL_LOSS_LOCAL, EVAL_ACC_LOCAL)

VTC_STATE_DECODER = "vtc-decoder"  # context.state keys of a FedVTC node
VTC_STATE_DECODER_OPT = "vtc-decoder-optimizer"
VTC_STATE_CLASSIFIER = "vtc-classifier"


def pack_stats(stats: FeatureStats) -> ArrayRecord:
    mean, var, count = stats.mean.detach().cpu(), stats.var.detach().cpu(), stats.count.cpu()
    return ArrayRecord({MEAN: Array(mean.numpy()), VAR: Array(var.numpy()),
                        COUNT: Array(count.numpy())})


def unpack_stats(content: RecordDict, key: str) -> FeatureStats:
    record = content.array_records[key]
    t = {k: torch.from_numpy(record[k].numpy().copy()) for k in STATS_KEYS}
    return FeatureStats(t[MEAN], t[VAR], t[COUNT])


@dataclass(frozen=True, slots=True)
class VTCDown:
    """A FedVTC server message: the round, and the pooled statistics and decoder when sent."""

    server_round: int
    global_stats: FeatureStats | None
    decoder: dict[str, Any] | None


def encode_down(
    server_round: int, global_stats: FeatureStats | None = None, decoder: ArrayRecord | None = None
) -> RecordDict:
    """``config``, plus ``global-stats`` and ``decoder`` when given."""
    content = config_message(server_round)
    if global_stats is not None:
        content[VTC_GLOBAL_STATS] = pack_stats(global_stats)
    if decoder is not None:
        content[VTC_DECODER] = decoder
    return content


def decode_down(content: RecordDict) -> VTCDown:
    return VTCDown(
        server_round=server_round(content),
        global_stats=(unpack_stats(content, VTC_GLOBAL_STATS)
                      if VTC_GLOBAL_STATS in content else None),
        decoder=unpack_arrays(content, VTC_DECODER) if VTC_DECODER in content else None,
    )


def encode_stats_reply(stats: FeatureStats, metrics: TrainMetrics, info: ClientInfo) -> RecordDict:
    """``stats``, ``metrics`` (:data:`TRAIN_METRICS`) and ``client-info``: no weights."""
    return train_reply({VTC_STATS: pack_stats(stats)}, metrics, info)


@dataclass(frozen=True, slots=True)
class StatsUp:
    """A screened ``train.stats`` reply."""

    stats: FeatureStats
    train_loss: float
    model: str  # the client's architecture, from its client-info


def decode_stats_reply(content: RecordDict) -> StatsUp:
    info = decode_client_info(content)
    return StatsUp(
        stats=unpack_stats(content, VTC_STATS),
        train_loss=TrainMetrics.decode(content).train_loss,
        model=info.model if info is not None else "",
    )


def screen_stats_reply(content: RecordDict, num_classes: int, latent_dim: int) -> str | None:
    """Why a FedVTC statistics reply must not be pooled, or ``None`` when it is sound.

    Checks: exactly the ``stats`` ArrayRecord with ``mean``/``var`` float32
    (C, p) finite (var ≥ 0) and ``count`` int64 (C,) ≥ 0 with a positive sum;
    ``metrics`` as a train reply; ``client-info`` present.
    """
    if set(content.array_records) != {VTC_STATS}:
        return f"array records {sorted(content.array_records)} != ['{VTC_STATS}']"
    if CLIENT_INFO not in content.config_records:
        return f"missing {CLIENT_INFO!r}"
    shape = (num_classes, latent_dim)
    reference = ArrayRecord({
        MEAN: Array(np.zeros(shape, np.float32)),
        VAR: Array(np.zeros(shape, np.float32)),
        COUNT: Array(np.zeros(num_classes, np.int64)),
    })
    record = content.array_records[VTC_STATS]
    reason = screen_arrays(record, reference)
    if reason is not None:
        return f"statistics: {reason}"
    if (record[VAR].numpy() < 0).any() or (record[COUNT].numpy() < 0).any():
        return "statistics: negative variance or count"
    if int(record[COUNT].numpy().sum()) <= 0:
        return "statistics: no examples counted"
    return screen_metrics(content, TRAIN_METRICS)


@dataclass(frozen=True, slots=True)
class DecoderUp:
    """A ``train.decoder`` reply: the phase's losses and ψ when it is shared."""

    num_examples: int
    vtc_loss: float
    rec_loss: float
    dm_loss: float
    train_s: float
    decoder: ArrayRecord | None = None

    def values(self) -> dict[str, int | float]:
        return {NUM_EXAMPLES: self.num_examples, VTC_LOSS: self.vtc_loss,
                REC_LOSS: self.rec_loss, DM_LOSS: self.dm_loss, TRAIN_S: self.train_s}


@dataclass(frozen=True, slots=True)
class FinetuneUp:
    """A ``train.finetune`` reply."""

    num_examples: int
    finetune_loss: float
    train_s: float

    def values(self) -> dict[str, int | float]:
        return {NUM_EXAMPLES: self.num_examples, FINETUNE_LOSS: self.finetune_loss,
                TRAIN_S: self.train_s}


#: ``eval-loss-local`` and ``eval-acc-local`` of a node without local test data.
NOT_MEASURED = -1.0


@dataclass(frozen=True, slots=True)
class EvalUp:
    """An ``evaluate.vtc`` reply: the node's classifier on the global test set and its split.

    A node without local test data reports its local loss and accuracy as
    :data:`NOT_MEASURED` (the server counts it as ``skipped-evaluate`` for the local means).
    """

    num_examples: int
    loss: float
    accuracy: float
    loss_local: float
    accuracy_local: float

    def values(self) -> dict[str, int | float]:
        return {NUM_EXAMPLES: self.num_examples, EVAL_LOSS: self.loss, EVAL_ACC: self.accuracy,
                EVAL_LOSS_LOCAL: self.loss_local, EVAL_ACC_LOCAL: self.accuracy_local}

    @property
    def measured_locally(self) -> bool:
        return self.accuracy_local != NOT_MEASURED


def encode_reply(up: DecoderUp | FinetuneUp | EvalUp) -> RecordDict:
    """``metrics`` of the reply's phase, plus the ``decoder`` when it is shared."""
    keys = {DecoderUp: VTC_DECODER_METRICS, FinetuneUp: VTC_FINETUNE_METRICS,
            EvalUp: VTC_EVAL_METRICS}[type(up)]
    content = RecordDict({METRICS: metrics_record(up.values(), keys)})
    if isinstance(up, DecoderUp) and up.decoder is not None:
        content[VTC_DECODER] = up.decoder
    return content


def decode_decoder_reply(content: RecordDict) -> tuple[float, float, dict[str, Any] | None]:
    """``(num-examples, vtc-loss, decoder or None)`` of a screened ``train.decoder`` reply."""
    m = content.metric_records[METRICS]
    decoder = unpack_arrays(content, VTC_DECODER) if VTC_DECODER in content else None
    return get_float(m, NUM_EXAMPLES), get_float(m, VTC_LOSS), decoder


def decode_eval_reply(content: RecordDict) -> EvalUp:
    m = content.metric_records[METRICS]
    return EvalUp(int(get_float(m, NUM_EXAMPLES)), get_float(m, EVAL_LOSS),
                  get_float(m, EVAL_ACC), get_float(m, EVAL_LOSS_LOCAL),
                  get_float(m, EVAL_ACC_LOCAL))


def decode_finetune_loss(content: RecordDict) -> float:
    return get_float(content.metric_records[METRICS], FINETUNE_LOSS)


def screen_reply(
    content: RecordDict, keys: tuple[str, ...], decoder: ArrayRecord | None = None
) -> str | None:
    """Metrics with exactly ``keys``; the ``decoder`` matching ``decoder`` when one is expected."""
    expected = {VTC_DECODER} if decoder is not None else set()
    if set(content.array_records) != expected:
        return f"array records {sorted(content.array_records)} != {sorted(expected)}"
    if decoder is not None:
        reason = screen_arrays(content.array_records[VTC_DECODER], decoder)
        if reason is not None:
            return f"decoder: {reason}"
    return screen_metrics(content, keys)
