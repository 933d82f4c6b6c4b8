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


# -- node state: torch state dicts persisted in ``context.state`` ---------------------------


def save_state(state: RecordDict, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Keep ``tensors`` (a model's state dict, cached inputs) in a node's ``context.state``."""
    state[key] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def load_state(state: RecordDict, key: str) -> dict[str, torch.Tensor] | None:
    """What :func:`save_state` stored under ``key``, or ``None`` on this node's first call."""
    if key not in state.array_records:
        return None
    return state.array_records[key].to_torch_state_dict()


# -- FedZGE (SPEC §3.2): train.local, query.logits, train.distill ----------------------------

FEDZGE_MODEL = "fedzge-model"  # context.state: the private model, never sent
FEDZGE_INPUTS = "fedzge-inputs"  # context.state: the last queried batch x, reused by distill
INPUTS = "inputs"
OUTPUTS = "outputs"
X = "x"
X_PERTURBED = "x-perturbed"  # tensor transport: the q perturbed batches (q, N, *x)
LOGITS = "logits"
SOFT_LABELS = "soft-labels"
QUERY_SEED = "query-seed"
NUM_DIRECTIONS = "num-directions"
SMOOTHING = "smoothing"
TEMPERATURE = "temperature"
STEPS = "steps"
INPUT_ROUND = "input-round"
ACC_GLOBAL = "acc-global"  # private model on the global test set (-1: not measured)
ACC_LOCAL = "acc-local"  # private model on the node's local test split (-1: not measured)
DISTILL_LOSS = "distill-loss"
#: Metrics of FedZGE replies: local update, query answer, local KD.
LOCAL_METRICS = (NUM_EXAMPLES, "train-loss", "train-s", ACC_GLOBAL, ACC_LOCAL)
QUERY_METRICS = (NUM_EXAMPLES,)
DISTILL_METRICS = (NUM_EXAMPLES, DISTILL_LOSS, ACC_GLOBAL, ACC_LOCAL)
#: Every ArrayRecord key FedZGE may put on the wire: images and logits, never weights.
FEDZGE_WIRE_ARRAYS = frozenset({X, X_PERTURBED, LOGITS, SOFT_LABELS})


def pack_metrics(metrics: Mapping[str, float | int], keys: tuple[str, ...]) -> RecordDict:
    """A reply that carries only ``metrics`` with exactly ``keys``."""
    return RecordDict({METRICS: MetricRecord({k: metrics[k] for k in keys})})


def pack_round(server_round: int) -> RecordDict:
    """A config-only message: ``config`` {``server-round``}."""
    return RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: server_round})})


def pack_query(
    server_round: int, x: torch.Tensor, num_directions: int, eps: float,
    seed: int | None = None, perturbed: torch.Tensor | None = None,
) -> RecordDict:
    """``query.logits``: x (N, *x) plus either the direction seed or the q batches (q, N, *x)."""
    arrays = {X: x} if perturbed is None else {X: x, X_PERTURBED: perturbed}
    config: dict[str, int | float] = {
        SERVER_ROUND: server_round, NUM_DIRECTIONS: num_directions, SMOOTHING: eps
    }
    if seed is not None:
        config[QUERY_SEED] = seed
    return RecordDict({INPUTS: pack_arrays(arrays), CONFIG: ConfigRecord(config)})


def unpack_query(content: RecordDict) -> tuple[torch.Tensor, torch.Tensor | None, ConfigRecord]:
    """x (N, *x), the perturbed batches (q, N, *x) when sent (``tensor``), and the config."""
    arrays = content.array_records[INPUTS]
    perturbed = arrays[X_PERTURBED].numpy() if X_PERTURBED in arrays else None
    return (
        torch.from_numpy(arrays[X].numpy().copy()),
        torch.from_numpy(perturbed.copy()) if perturbed is not None else None,
        round_config(content),
    )


def pack_logits(logits: torch.Tensor, num_examples: int) -> RecordDict:
    """``query.logits`` reply: ``outputs`` {``logits``: (1+q, N, C)} and ``num-examples``."""
    return RecordDict(
        {
            OUTPUTS: pack_arrays({LOGITS: logits.float()}),
            METRICS: MetricRecord({NUM_EXAMPLES: num_examples}),
        }
    )


def unpack_logits(content: RecordDict) -> tuple[torch.Tensor, int]:
    """(1+q, N, C) logits and the client's ``num-examples`` (its ensemble weight)."""
    logits = content.array_records[OUTPUTS][LOGITS].numpy().copy()
    return torch.from_numpy(logits), int(content.metric_records[METRICS][NUM_EXAMPLES])


def pack_distill(
    server_round: int, soft_labels: torch.Tensor, temperature: float, steps: int
) -> RecordDict:
    """``train.distill``: the ensemble logits ℓ̄(x) (N, C); the client already holds x."""
    config = {SERVER_ROUND: server_round, TEMPERATURE: temperature, STEPS: steps}
    return RecordDict(
        {INPUTS: pack_arrays({SOFT_LABELS: soft_labels.float()}), CONFIG: ConfigRecord(config)}
    )


def unpack_distill(content: RecordDict) -> tuple[torch.Tensor, ConfigRecord]:
    soft = content.array_records[INPUTS][SOFT_LABELS].numpy().copy()
    return torch.from_numpy(soft), round_config(content)


def screen_logits_reply(
    content: RecordDict, shape: tuple[int, int, int]
) -> str | None:
    """Why a ``query.logits`` reply must not enter the ensemble, or ``None``.

    Exactly ``outputs`` {``logits``} of ``shape`` = (1+q, N, C), float32, finite, and
    ``metrics`` {``num-examples`` > 0}.
    """
    if set(content.array_records) != {OUTPUTS}:
        return f"array records {sorted(content.array_records)} != ['{OUTPUTS}']"
    arrays = content.array_records[OUTPUTS]
    if list(arrays) != [LOGITS]:
        return f"output keys {list(arrays)} != ['{LOGITS}']"
    values = arrays[LOGITS].numpy()
    if tuple(values.shape) != tuple(shape) or values.dtype != np.float32:
        return f"logits are {values.dtype}{list(values.shape)}, expected float32{list(shape)}"
    if not np.isfinite(values).all():
        return "logits have NaN/Inf values"
    return _screen_metrics(content, QUERY_METRICS)


def screen_local_reply(content: RecordDict) -> str | None:
    """A ``train.local`` reply: metrics only (:data:`LOCAL_METRICS`), no arrays."""
    if content.array_records:
        return f"unexpected array records {sorted(content.array_records)}"
    return _screen_metrics(content, LOCAL_METRICS)


def screen_distill_reply(content: RecordDict) -> str | None:
    """A ``train.distill`` reply: metrics only (:data:`DISTILL_METRICS`), no arrays."""
    if content.array_records:
        return f"unexpected array records {sorted(content.array_records)}"
    return _screen_metrics(content, DISTILL_METRICS)
