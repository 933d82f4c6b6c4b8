"""What every protocol shares: record and metric keys, codecs, reply builders, screening.

Every record key on the wire is a constant in :mod:`fedapp.wire`, so a rename is
one edit; every *metric* key of every protocol is a constant here. Train replies
of every trainer carry the same metrics (:data:`TRAIN_METRICS`), which is what
lets Flower's FedAvg aggregate mixed federations; per-client facts that must not
be averaged (label counts) travel in a ConfigRecord (:data:`CLIENT_INFO`).

Decoding is typed: ``decode_*`` functions turn a record into a frozen dataclass
and raise :class:`WireError` (one line) on a value of the wrong type, so no caller
indexes a raw record or casts its values.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

# -- record names and shared config keys ---------------------------------------------------

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT_INFO = "client-info"

SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"  # written by Flower's FedProx
SMOOTHING = "smoothing"  # μ or ε: HERON-SFL's ZO steps, FedZGE's query perturbation
STEPS = "steps"  # config of FedZGE's train.distill; metric of HERON-SFL's split replies

# -- every metric key of every protocol ---------------------------------------------------

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
FORWARD_PASSES = "forward-passes"
BACKWARD_PASSES = "backward-passes"
PEAK_MEM_MB = "peak-mem-mb"
TRAIN_S = "train-s"
EVAL_LOSS, EVAL_ACC = "eval-loss", "eval-acc"  # the global test set (FedVTC) or local split
EVAL_LOSS_LOCAL, EVAL_ACC_LOCAL = "eval-loss-local", "eval-acc-local"  # the local test split
STEP_FLOPS = "step-flops"  # HERON-SFL: one measured local step
STEP_PEAK_MEM_MB = "step-peak-mem-mb"
UPLOADS = "uploads"
ACC_GLOBAL = "acc-global"  # FedZGE: private model on the global test set (-1: not measured)
ACC_LOCAL = "acc-local"  # FedZGE: private model on the local test split (-1: not measured)
DISTILL_LOSS = "distill-loss"
VTC_LOSS, REC_LOSS, DM_LOSS = "vtc-loss", "rec-loss", "dm-loss"  # FedVTC decoder phase
FINETUNE_LOSS = "finetune-loss"

#: Metrics of every ``train``-shaped reply (weights, zo-seed, split, FedVTC statistics).
TRAIN_METRICS = (NUM_EXAMPLES, TRAIN_LOSS, FORWARD_PASSES, BACKWARD_PASSES, PEAK_MEM_MB, TRAIN_S)
EVAL_METRICS = (NUM_EXAMPLES, EVAL_LOSS, EVAL_ACC)

INFO_PARTITION = "partition-id"
INFO_TRAINER = "trainer"
INFO_MODEL = "model"
INFO_LABEL_COUNTS = "label-counts"


class WireError(ValueError):
    """A record that does not hold what the contract says; the message is one line."""


# -- typed scalar access ------------------------------------------------------------------

Record = ConfigRecord | MetricRecord


def get_int(record: Record, key: str, default: int | None = None) -> int:
    """``record[key]`` as an int (``default`` when absent and given)."""
    value = record.get(key, default)
    if isinstance(value, (int, float)):
        return int(value)
    raise WireError(f"{key} = {value!r} is not a number")


def get_float(record: Record, key: str, default: float | None = None) -> float:
    """``record[key]`` as a float (``default`` when absent and given)."""
    value = record.get(key, default)
    if isinstance(value, (int, float)):
        return float(value)
    raise WireError(f"{key} = {value!r} is not a number")


def get_ints(record: Record, key: str) -> list[int]:
    """``record[key]``, a list of numbers, as ints."""
    value = record.get(key)
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return [int(v) for v in value]
    raise WireError(f"{key} = {value!r} is not a list of numbers")


# -- codecs -------------------------------------------------------------------------------


def pack_arrays(state_dict: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A model's state dict (parameters and buffers) as an ArrayRecord."""
    return ArrayRecord({k: v.detach().cpu() for k, v in state_dict.items()})


def unpack_arrays(content: RecordDict, key: str = ARRAYS) -> dict[str, torch.Tensor]:
    return content.array_records[key].to_torch_state_dict()


def round_config(content: RecordDict) -> ConfigRecord:
    """The ``config`` record the strategy sent (empty when absent)."""
    return content.config_records.get(CONFIG, ConfigRecord())


def server_round(content: RecordDict, default: int = 1) -> int:
    """``config[server-round]`` of a server message (``default`` when absent)."""
    return get_int(round_config(content), SERVER_ROUND, default)


def config_message(server_round: int) -> RecordDict:
    """A config-only server message: ``config`` {``server-round``}."""
    return RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: server_round})})


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


# -- client info and reply builders -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Per-client facts that must not be averaged: sent as a ConfigRecord, not metrics."""

    partition_id: int
    trainer: str
    model: str
    label_counts: list[int]

    def record(self) -> ConfigRecord:
        return ConfigRecord({
            INFO_PARTITION: self.partition_id,
            INFO_TRAINER: self.trainer,
            INFO_MODEL: self.model,
            INFO_LABEL_COUNTS: self.label_counts,
        })


def decode_client_info(content: RecordDict) -> ClientInfo | None:
    """A reply's ``client-info``, or ``None`` when it is absent or malformed."""
    info = content.config_records.get(CLIENT_INFO)
    if info is None:
        return None
    counts = info.get(INFO_LABEL_COUNTS)
    pid = info.get(INFO_PARTITION)
    if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts):
        return None
    if not isinstance(pid, int):
        return None
    return ClientInfo(pid, str(info.get(INFO_TRAINER)), str(info.get(INFO_MODEL)),
                      [int(c) for c in counts])


@dataclass(frozen=True, slots=True)
class TrainMetrics:
    """The :data:`TRAIN_METRICS` of a train reply."""

    num_examples: int
    train_loss: float
    forward_passes: int
    backward_passes: int
    peak_mem_mb: float
    train_s: float

    def values(self) -> dict[str, int | float]:
        return {
            NUM_EXAMPLES: self.num_examples,
            TRAIN_LOSS: self.train_loss,
            FORWARD_PASSES: self.forward_passes,
            BACKWARD_PASSES: self.backward_passes,
            PEAK_MEM_MB: self.peak_mem_mb,
            TRAIN_S: self.train_s,
        }

    @classmethod
    def decode(cls, content: RecordDict) -> TrainMetrics:
        m = content.metric_records[METRICS]
        return cls(get_int(m, NUM_EXAMPLES), get_float(m, TRAIN_LOSS),
                   get_int(m, FORWARD_PASSES), get_int(m, BACKWARD_PASSES),
                   get_float(m, PEAK_MEM_MB), get_float(m, TRAIN_S))


def metrics_record(values: Mapping[str, int | float], keys: Sequence[str]) -> MetricRecord:
    """``values`` restricted to exactly ``keys``, in that order."""
    return MetricRecord({k: values[k] for k in keys})


def metrics_reply(values: Mapping[str, int | float], keys: Sequence[str]) -> RecordDict:
    """A reply that carries only ``metrics`` with exactly ``keys``."""
    return RecordDict({METRICS: metrics_record(values, keys)})


def train_reply(
    payload: Mapping[str, ArrayRecord], metrics: TrainMetrics, info: ClientInfo
) -> RecordDict:
    """A train reply of any protocol: its ``payload`` records, :data:`TRAIN_METRICS`, ``info``."""
    return RecordDict({**payload, METRICS: metrics_record(metrics.values(), TRAIN_METRICS),
                       CLIENT_INFO: info.record()})


def reply_metric(content: RecordDict, key: str) -> float:
    """One scalar of a reply's ``metrics``."""
    return get_float(content.metric_records[METRICS], key)


# -- screening ----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return all(isinstance(v, int) or math.isfinite(v) for v in values)


def screen_metrics(content: RecordDict, expected: Sequence[str]) -> str | None:
    """Exactly the ``metrics`` record with exactly ``expected``, finite, ``num-examples`` > 0."""
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


def screen_arrays(arrays: ArrayRecord, reference: ArrayRecord, name: str = "array") -> str | None:
    """Keys, shapes and dtypes as in ``reference``, floating values finite."""
    if list(arrays) != list(reference):
        missing, extra = set(reference) - set(arrays), set(arrays) - set(reference)
        return f"{name} keys differ (missing {sorted(missing)}, unexpected {sorted(extra)})"
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
            return f"{name} {key!r} is {arr.dtype}{list(arr.shape)}, expected {ref.dtype}{list(ref.shape)}"
        values = arr.numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return f"{name} {key!r} has NaN/Inf values"
    return None


def screen_no_arrays(content: RecordDict, keys: Sequence[str]) -> str | None:
    """A metrics-only reply: no ArrayRecord, ``metrics`` with exactly ``keys``."""
    if content.array_records:
        return f"unexpected array records {sorted(content.array_records)}"
    return screen_metrics(content, keys)


# -- node state: torch state dicts persisted in ``context.state`` --------------------------

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
    if not isinstance(blob, bytes):
        raise WireError(f"node state {key!r} holds {type(blob).__name__}, not bytes")
    loaded: dict[str, Any] = torch.load(io.BytesIO(blob), weights_only=True)
    return loaded
