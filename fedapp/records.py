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

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

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


def client_info(partition_id: int, trainer: str, model: str, label_counts: list[int]) -> ConfigRecord:
    """Per-client facts that must not be averaged (a ConfigRecord, not metrics)."""
    return ConfigRecord(
        {
            INFO_PARTITION: partition_id,
            INFO_TRAINER: trainer,
            INFO_MODEL: model,
            INFO_LABEL_COUNTS: label_counts,
        }
    )


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
            CLIENT_INFO: client_info(partition_id, trainer, model, label_counts),
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
    reason = _screen_arrays(content.array_records[ARRAYS], reference, "array")
    if reason is not None:
        return reason
    return _screen_metrics(content, TRAIN_METRICS)


def screen_eval_reply(content: RecordDict) -> str | None:
    """Why an evaluate reply must not be aggregated, or ``None`` when it is sound."""
    return _screen_metrics(content, EVAL_METRICS)


# -- HERON-SFL / CSE-FSL: the split wire (train.split) -----------------------------------------

TRAIN_SPLIT = "train.split"
FRONT = "front"  # θ_c: client front-end state dict (keys of the full model)
AUX = "aux"  # θ_a: client auxiliary head state dict
ACTIVATIONS = "activations"  # smashed data of every k-th local step
ACTS = "acts"  # (N, *cut) float32: the U uploaded batches, concatenated
LABELS = "labels"  # (N,) int64
BATCH_SIZES = "batch-sizes"  # (U,) int64, summing to N
LOCAL_STEPS = "local-steps"  # h
UPLOAD_EVERY = "upload-every"  # k
SMOOTHING = "smoothing"  # μ
LR = "lr"  # η_l

SPLIT_METRICS = (*TRAIN_METRICS, "steps", "step-flops", "step-peak-mem-mb", "uploads")


def pack_split_config(
    server_round: int, local_steps: int, upload_every: int, smoothing: float, lr: float
) -> ConfigRecord:
    return ConfigRecord(
        {
            SERVER_ROUND: server_round,
            LOCAL_STEPS: local_steps,
            UPLOAD_EVERY: upload_every,
            SMOOTHING: smoothing,
            LR: lr,
        }
    )


def pack_split_message(
    front: Mapping[str, torch.Tensor], aux: Mapping[str, torch.Tensor], config: ConfigRecord
) -> RecordDict:
    """Server -> client: θ_c, θ_a and the round config; never gradients or activations."""
    return RecordDict({FRONT: pack_arrays(front), AUX: pack_arrays(aux), CONFIG: config})


def unpack_split_message(content: RecordDict) -> tuple[
    dict[str, torch.Tensor], dict[str, torch.Tensor], ConfigRecord
]:
    return unpack_arrays(content, FRONT), unpack_arrays(content, AUX), round_config(content)


def pack_split_reply(
    front: Mapping[str, torch.Tensor],
    aux: Mapping[str, torch.Tensor],
    acts: torch.Tensor,
    labels: torch.Tensor,
    batch_sizes: list[int],
    metrics: Mapping[str, float | int],
    info: ConfigRecord,
) -> RecordDict:
    """Client -> server: θ_c, θ_a, the smashed batches, :data:`SPLIT_METRICS`, ``client-info``.

    ``info`` is :func:`client_info` of the replying node.
    """
    return RecordDict(
        {
            FRONT: pack_arrays(front),
            AUX: pack_arrays(aux),
            ACTIVATIONS: ArrayRecord(
                {
                    ACTS: acts.detach().cpu().float(),
                    LABELS: labels.detach().cpu().long(),
                    BATCH_SIZES: torch.tensor(batch_sizes, dtype=torch.int64),
                }
            ),
            METRICS: MetricRecord({k: metrics[k] for k in SPLIT_METRICS}),
            CLIENT_INFO: info,
        }
    )


def unpack_activations(content: RecordDict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The uploaded smashed batches as ``(acts (B_u, *cut), labels (B_u,))`` pairs, in order."""
    record = content.array_records[ACTIVATIONS]
    acts, labels = (torch.from_numpy(record[k].numpy()) for k in (ACTS, LABELS))
    sizes = [int(s) for s in record[BATCH_SIZES].numpy()]
    return list(zip(acts.split(sizes), labels.split(sizes), strict=True))


def split_reply_info(content: RecordDict) -> tuple[int, list[int]]:
    """``(partition id, label counts)`` of a split reply."""
    info = content.config_records[CLIENT_INFO]
    return int(info[INFO_PARTITION]), [int(c) for c in info[INFO_LABEL_COUNTS]]  # type: ignore[arg-type, union-attr]


def _screen_arrays(arrays: ArrayRecord, reference: ArrayRecord, name: str) -> str | None:
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


def _screen_activations(record: ArrayRecord, cut_shape: tuple[int, ...], num_classes: int) -> str | None:
    if set(record) != {ACTS, LABELS, BATCH_SIZES}:
        return f"activation keys {sorted(record)} != {sorted([ACTS, LABELS, BATCH_SIZES])}"
    acts, labels, sizes = (record[k].numpy() for k in (ACTS, LABELS, BATCH_SIZES))
    if acts.dtype != np.float32 or tuple(acts.shape[1:]) != cut_shape:
        return f"acts are {acts.dtype}{list(acts.shape)}, expected float32[N, {', '.join(map(str, cut_shape))}]"
    if not np.isfinite(acts).all():
        return "acts have NaN/Inf values"
    if labels.dtype != np.int64 or labels.shape != (len(acts),):
        return f"labels are {labels.dtype}{list(labels.shape)}, expected int64[{len(acts)}]"
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        return f"labels outside [0, {num_classes})"
    if sizes.dtype != np.int64 or sizes.ndim != 1 or (sizes <= 0).any() or sizes.sum() != len(acts):
        return f"batch-sizes {sizes.tolist()} do not split {len(acts)} activations"
    return None


def screen_split_reply(
    content: RecordDict, front: ArrayRecord, aux: ArrayRecord, cut_shape: tuple[int, ...],
    num_classes: int,
) -> str | None:
    """Why a ``train.split`` reply must not be used, or ``None`` when it is sound.

    Checks: exactly the ``front``, ``aux`` and ``activations`` ArrayRecords;
    front and aux with the sent keys, shapes and dtypes, all finite; activations
    float32 (N, *cut_shape) and finite, labels int64 (N,) in [0, C), batch sizes
    positive and summing to N; metrics exactly :data:`SPLIT_METRICS`, finite.
    """
    expected = {FRONT, AUX, ACTIVATIONS}
    if set(content.array_records) != expected:
        return f"array records {sorted(content.array_records)} != {sorted(expected)}"
    for name, ref in ((FRONT, front), (AUX, aux)):
        reason = _screen_arrays(content.array_records[name], ref, name)
        if reason is not None:
            return reason
    reason = _screen_activations(content.array_records[ACTIVATIONS], cut_shape, num_classes)
    if reason is not None:
        return reason
    return _screen_metrics(content, SPLIT_METRICS)
