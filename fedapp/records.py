"""The wire contract: message keys, reply codecs, reply screening and byte counts.

Every record key the server and clients exchange is a constant here, so a
rename is one edit. Train replies of every trainer carry the same metric keys
(:data:`TRAIN_METRICS`), which is what lets Flower's FedAvg aggregate mixed
federations; per-client facts that must not be averaged (label counts) travel
in a ConfigRecord (:data:`CLIENT_INFO`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import io

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedapp.task.stats import FeatureStats

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT_INFO = "client-info"

SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"  # written by Flower's FedProx
NUM_EXAMPLES = "num-examples"

TRAIN_METRICS = (
    NUM_EXAMPLES,
    "train-loss",
    "forward-passes",
    "backward-passes",
    "peak-mem-mb",
    "train-s",
)
EVAL_METRICS = (NUM_EXAMPLES, "eval-loss", "eval-acc")

INFO_PARTITION = "partition-id"
INFO_TRAINER = "trainer"
INFO_MODEL = "model"
INFO_LABEL_COUNTS = "label-counts"


def pack_arrays(state_dict: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A model's state dict (parameters and buffers) as an ArrayRecord."""
    return ArrayRecord({k: v.detach().cpu() for k, v in state_dict.items()})


def unpack_arrays(content: RecordDict, key: str = ARRAYS) -> dict[str, torch.Tensor]:
    return content.array_records[key].to_torch_state_dict()


def round_config(content: RecordDict) -> ConfigRecord:
    """The ``config`` record the strategy sent (empty when absent)."""
    return content.config_records.get(CONFIG, ConfigRecord())


def pack_train_reply(
    arrays: ArrayRecord,
    metrics: Mapping[str, float | int],
    partition_id: int,
    trainer: str,
    model: str,
    label_counts: list[int],
) -> RecordDict:
    """``arrays``, ``metrics`` (exactly :data:`TRAIN_METRICS`) and ``client-info``."""
    return RecordDict(
        {
            ARRAYS: arrays,
            METRICS: MetricRecord({k: metrics[k] for k in TRAIN_METRICS}),
            CLIENT_INFO: ConfigRecord(
                {
                    INFO_PARTITION: partition_id,
                    INFO_TRAINER: trainer,
                    INFO_MODEL: model,
                    INFO_LABEL_COUNTS: label_counts,
                }
            ),
        }
    )


def pack_eval_reply(num_examples: int, loss: float, accuracy: float) -> RecordDict:
    return RecordDict(
        {
            METRICS: MetricRecord(
                {NUM_EXAMPLES: num_examples, "eval-loss": loss, "eval-acc": accuracy}
            )
        }
    )


def match_dtypes(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """Cast aggregated arrays back to the reference dtypes.

    Flower's weighted average turns integer buffers (BatchNorm's
    ``num_batches_tracked``) into float64; they are rounded back here.
    """
    out = {}
    for key, ref in reference.items():
        values, target = arrays[key].numpy(), ref.numpy().dtype
        if values.dtype != target:
            values = (np.rint(values) if target.kind in "iu" else values).astype(target)
        out[key] = Array(np.asarray(values))
    return ArrayRecord(out)


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message's records (array data plus scalars), as sent."""
    return sum(record.count_bytes() for record in content.values())


def _finite(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return all(isinstance(v, int) or math.isfinite(v) for v in values)


def _screen_metrics(content: RecordDict, expected: tuple[str, ...]) -> str | None:
    if set(content.metric_records) != {METRICS}:
        return f"metric records {sorted(content.metric_records)} != ['{METRICS}']"
    metrics = content.metric_records[METRICS]
    if set(metrics) != set(expected):
        return f"metric keys {sorted(metrics)} != {sorted(expected)}"
    bad = [k for k, v in metrics.items() if not _finite(v)]
    if bad:
        return f"non-finite metrics {bad}"
    n = metrics[NUM_EXAMPLES]
    if isinstance(n, list) or n <= 0:
        return f"{NUM_EXAMPLES} = {n!r} is not a positive scalar"
    return None


def screen_train_reply(content: RecordDict, reference: ArrayRecord) -> str | None:
    """Why a train reply must not be aggregated, or ``None`` when it is sound.

    Checks: exactly the ``arrays`` ArrayRecord with the reference's keys, shapes
    and dtypes, all finite; ``metrics`` with exactly :data:`TRAIN_METRICS`, finite,
    ``num-examples`` > 0.
    """
    if set(content.array_records) != {ARRAYS}:
        return f"array records {sorted(content.array_records)} != ['{ARRAYS}']"
    reason = _screen_arrays(content.array_records[ARRAYS], reference)
    return reason or _screen_metrics(content, TRAIN_METRICS)


def _screen_arrays(arrays: ArrayRecord, reference: ArrayRecord) -> str | None:
    """Same keys, shapes and dtypes as ``reference``, floating values finite."""
    if list(arrays) != list(reference):
        missing, extra = set(reference) - set(arrays), set(arrays) - set(reference)
        return f"array keys differ (missing {sorted(missing)}, unexpected {sorted(extra)})"
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
            return f"array {key!r} is {arr.dtype}{list(arr.shape)}, expected {ref.dtype}{list(ref.shape)}"
        values = arr.numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return f"array {key!r} has NaN/Inf values"
    return None


def screen_eval_reply(content: RecordDict) -> str | None:
    """Why an evaluate reply must not be aggregated, or ``None`` when it is sound."""
    return _screen_metrics(content, EVAL_METRICS)


# -- node state (``context.state``) ---------------------------------------------------------

STATE_BLOB = "blob"


def save_state(state: RecordDict, key: str, obj: Mapping[str, Any]) -> None:
    """Keep a torch state dict (model or optimiser) in a node's ``context.state`` under ``key``.

    Serialised with ``torch.save`` into a ConfigRecord's bytes, so nested optimiser
    states (step counts, param groups) survive as they are.
    """
    buf = io.BytesIO()
    torch.save(dict(obj), buf)
    state[key] = ConfigRecord({STATE_BLOB: buf.getvalue()})


def load_state(state: RecordDict, key: str) -> dict[str, Any] | None:
    """What :func:`save_state` kept under ``key``, or ``None`` on the node's first call."""
    if key not in state.config_records:
        return None
    blob = state.config_records[key][STATE_BLOB]
    return torch.load(io.BytesIO(blob), weights_only=True)  # type: ignore[arg-type]


# -- FedVTC (our reading of Niu, Dong, Qin, arXiv 2508.01669; SPEC §5) -------------------------

VTC_STATS = "stats"  # client -> server: per-class mean, var (C, p), count (C,)
VTC_GLOBAL_STATS = "global-stats"  # server -> client: pooled mean, var, count
VTC_DECODER = "decoder"  # the decoder ψ's state dict, both ways when shared
STATS_KEYS = ("mean", "var", "count")

TRAIN_LOSS, VTC_LOSS, FINETUNE_LOSS = "train-loss", "vtc-loss", "finetune-loss"
EVAL_LOSS, EVAL_ACC = "eval-loss", "eval-acc"  # the global test set
EVAL_LOSS_LOCAL, EVAL_ACC_LOCAL = "eval-loss-local", "eval-acc-local"  # the local test split
VTC_DECODER_METRICS = (NUM_EXAMPLES, VTC_LOSS, "rec-loss", "dm-loss", "train-s")
VTC_FINETUNE_METRICS = (NUM_EXAMPLES, FINETUNE_LOSS, "train-s")
VTC_EVAL_METRICS = (NUM_EXAMPLES, EVAL_LOSS, EVAL_ACC, EVAL_LOSS_LOCAL, EVAL_ACC_LOCAL)

VTC_STATE_DECODER = "vtc-decoder"  # context.state keys of a FedVTC node
VTC_STATE_DECODER_OPT = "vtc-decoder-optimizer"
VTC_STATE_CLASSIFIER = "vtc-classifier"


def pack_stats(stats: FeatureStats) -> ArrayRecord:
    mean, var, count = stats.mean.detach().cpu(), stats.var.detach().cpu(), stats.count.cpu()
    return ArrayRecord({"mean": Array(mean.numpy()), "var": Array(var.numpy()),
                        "count": Array(count.numpy())})


def unpack_stats(content: RecordDict, key: str) -> FeatureStats:
    record = content.array_records[key]
    t = {k: torch.from_numpy(record[k].numpy().copy()) for k in STATS_KEYS}
    return FeatureStats(t["mean"], t["var"], t["count"])


def pack_vtc_stats_reply(
    stats: FeatureStats,
    metrics: Mapping[str, float | int],
    partition_id: int,
    trainer: str,
    model: str,
    label_counts: list[int],
) -> RecordDict:
    """``stats``, ``metrics`` (:data:`TRAIN_METRICS`) and ``client-info``: no weights."""
    reply = pack_train_reply(ArrayRecord(), metrics, partition_id, trainer, model, label_counts)
    del reply.array_records[ARRAYS]
    reply[VTC_STATS] = pack_stats(stats)
    return reply


def reply_metric(content: RecordDict, key: str) -> float:
    """One scalar of a reply's ``metrics``."""
    return float(content.metric_records[METRICS][key])  # type: ignore[arg-type]


def client_model(content: RecordDict) -> str:
    """The architecture a client reported in its ``client-info``."""
    return str(content.config_records[CLIENT_INFO][INFO_MODEL])


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
        "mean": Array(np.zeros(shape, np.float32)),
        "var": Array(np.zeros(shape, np.float32)),
        "count": Array(np.zeros(num_classes, np.int64)),
    })
    record = content.array_records[VTC_STATS]
    reason = _screen_arrays(record, reference)
    if reason is not None:
        return f"statistics: {reason}"
    if (record["var"].numpy() < 0).any() or (record["count"].numpy() < 0).any():
        return "statistics: negative variance or count"
    if int(record["count"].numpy().sum()) <= 0:
        return "statistics: no examples counted"
    return _screen_metrics(content, TRAIN_METRICS)


def pack_vtc_round(
    global_stats: FeatureStats | None, decoder: ArrayRecord | None, server_round: int
) -> RecordDict:
    """A FedVTC server message: ``config``, plus ``global-stats`` and ``decoder`` when given."""
    content = RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: server_round})})
    if global_stats is not None:
        content[VTC_GLOBAL_STATS] = pack_stats(global_stats)
    if decoder is not None:
        content[VTC_DECODER] = decoder
    return content


def unpack_vtc_round(content: RecordDict) -> tuple[int, FeatureStats | None, dict[str, Any] | None]:
    """Server round, global statistics (or ``None``) and decoder state (or ``None``)."""
    server_round = int(round_config(content).get(SERVER_ROUND, 1))  # type: ignore[arg-type]
    stats = unpack_stats(content, VTC_GLOBAL_STATS) if VTC_GLOBAL_STATS in content else None
    decoder = unpack_arrays(content, VTC_DECODER) if VTC_DECODER in content else None
    return server_round, stats, decoder


def pack_vtc_reply(
    metrics: Mapping[str, float | int], keys: tuple[str, ...], decoder: ArrayRecord | None = None
) -> RecordDict:
    """``metrics`` with exactly ``keys``, plus the ``decoder`` when it is shared."""
    content = RecordDict({METRICS: MetricRecord({k: metrics[k] for k in keys})})
    if decoder is not None:
        content[VTC_DECODER] = decoder
    return content


def screen_vtc_reply(
    content: RecordDict, keys: tuple[str, ...], decoder: ArrayRecord | None = None
) -> str | None:
    """Metrics with exactly ``keys``; the ``decoder`` matching ``decoder`` when one is expected."""
    expected = {VTC_DECODER} if decoder is not None else set()
    if set(content.array_records) != expected:
        return f"array records {sorted(content.array_records)} != {sorted(expected)}"
    if decoder is not None:
        reason = _screen_arrays(content.array_records[VTC_DECODER], decoder)
        if reason is not None:
            return f"decoder: {reason}"
    return _screen_metrics(content, keys)
