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

from fedapp.task.fedgen import RegularizerRound

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
    arrays = content.array_records[ARRAYS]
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
    return _screen_metrics(content, TRAIN_METRICS)


def screen_eval_reply(content: RecordDict) -> str | None:
    """Why an evaluate reply must not be aggregated, or ``None`` when it is sound."""
    return _screen_metrics(content, EVAL_METRICS)


# FedGen (Zhu, Hong, Zhou, ICML 2021, arXiv 2105.10056). From round 2 on, `train`
# messages carry the server's latent generator next to the model, and the `config`
# record carries the round's regularisation weights and the available labels.
# Replies keep FedAvg's shape; label counts already travel in `client-info`.
GENERATOR = "generator"
FEDGEN_ALPHA = "fedgen-alpha"
FEDGEN_BETA = "fedgen-beta"
FEDGEN_LABELS = "fedgen-labels"


def fedgen_config(
    config: ConfigRecord, alpha: float, beta: float, labels: list[int]
) -> ConfigRecord:
    """A copy of ``config`` with FedGen's alpha_t, beta_t and available labels."""
    return ConfigRecord(
        {**config, FEDGEN_ALPHA: alpha, FEDGEN_BETA: beta, FEDGEN_LABELS: list(labels)}
    )


def unpack_fedgen(content: RecordDict) -> RegularizerRound | None:
    """FedGen's regulariser inputs, or ``None`` when the message carries no generator."""
    if GENERATOR not in content.array_records:
        return None
    config = round_config(content)
    return RegularizerRound(
        generator=unpack_arrays(content, GENERATOR),
        alpha=float(config[FEDGEN_ALPHA]),  # type: ignore[arg-type]
        beta=float(config[FEDGEN_BETA]),  # type: ignore[arg-type]
        labels=tuple(int(y) for y in config[FEDGEN_LABELS]),  # type: ignore[union-attr]
    )


def label_counts(content: RecordDict) -> list[int] | None:
    """The label counts of a train reply's ``client-info``, or ``None`` if malformed."""
    info = content.config_records.get(CLIENT_INFO)
    counts = None if info is None else info.get(INFO_LABEL_COUNTS)
    if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts):
        return None
    return [int(c) for c in counts]
