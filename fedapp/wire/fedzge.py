"""The FedZGE protocol (``train.local``, ``query.logits``, ``train.distill``): no weights.

Contract of docs/strategies/fedzge.md (Wire contract). ``train.local`` is
config-only and answered with metrics (:data:`LOCAL_METRICS`); ``query.logits``
sends x (N, *img) plus a direction seed (``seed`` transport) or the q perturbed
batches (``tensor``) and is answered with ``outputs`` {``logits`` (1+q, N, C)};
``train.distill`` sends the ensemble's soft labels (N, C) and is answered with
:data:`DISTILL_METRICS`. Every array on the wire is an image batch or logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedapp.wire.common import (
    ACC_GLOBAL,
    ACC_LOCAL,
    CONFIG,
    DISTILL_LOSS,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    SMOOTHING,
    STEPS,
    TRAIN_LOSS,
    TRAIN_S,
    get_float,
    get_int,
    metrics_reply,
    pack_arrays,
    round_config,
    screen_metrics,
    screen_no_arrays,
)

TRAIN_LOCAL = "train.local"
QUERY_LOGITS = "query.logits"
TRAIN_DISTILL = "train.distill"

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
TEMPERATURE = "temperature"
INPUT_ROUND = "input-round"
#: Metrics of FedZGE replies: local update, query answer, local KD.
LOCAL_METRICS = (NUM_EXAMPLES, TRAIN_LOSS, TRAIN_S, ACC_GLOBAL, ACC_LOCAL)
QUERY_METRICS = (NUM_EXAMPLES,)
DISTILL_METRICS = (NUM_EXAMPLES, DISTILL_LOSS, ACC_GLOBAL, ACC_LOCAL)
#: Every ArrayRecord key FedZGE may put on the wire: images and logits, never weights.
FEDZGE_WIRE_ARRAYS = frozenset({X, X_PERTURBED, LOGITS, SOFT_LABELS})


@dataclass(frozen=True, slots=True)
class PrivateAccuracy:
    """The private model's accuracy after a phase (``-1``: not measured)."""

    on_global: float
    on_local: float


@dataclass(frozen=True, slots=True)
class LocalUp:
    """A ``train.local`` reply."""

    num_examples: int
    train_loss: float
    train_s: float
    accuracy: PrivateAccuracy


def encode_local_reply(up: LocalUp) -> RecordDict:
    return metrics_reply({
        NUM_EXAMPLES: up.num_examples, TRAIN_LOSS: up.train_loss, TRAIN_S: up.train_s,
        ACC_GLOBAL: up.accuracy.on_global, ACC_LOCAL: up.accuracy.on_local,
    }, LOCAL_METRICS)


@dataclass(frozen=True, slots=True)
class DistillUp:
    """A ``train.distill`` reply."""

    num_examples: int
    distill_loss: float
    accuracy: PrivateAccuracy


def encode_distill_reply(up: DistillUp) -> RecordDict:
    return metrics_reply({
        NUM_EXAMPLES: up.num_examples, DISTILL_LOSS: up.distill_loss,
        ACC_GLOBAL: up.accuracy.on_global, ACC_LOCAL: up.accuracy.on_local,
    }, DISTILL_METRICS)


def decode_accuracy(content: RecordDict) -> PrivateAccuracy:
    """The accuracies of a screened ``train.local`` or ``train.distill`` reply."""
    m = content.metric_records[METRICS]
    return PrivateAccuracy(get_float(m, ACC_GLOBAL), get_float(m, ACC_LOCAL))


def decode_distill_loss(content: RecordDict) -> float:
    return get_float(content.metric_records[METRICS], DISTILL_LOSS)


@dataclass(frozen=True, slots=True)
class QueryDown:
    """A ``query.logits`` message: x, and the q perturbed copies or the seed that rebuilds them."""

    server_round: int
    x: torch.Tensor  # (N, *img)
    perturbed: torch.Tensor | None  # (q, N, *img) with tensor transport, else None
    num_directions: int  # q
    smoothing: float  # ε
    seed: int | None  # seed transport: the direction seed


def encode_query(down: QueryDown) -> RecordDict:
    """``query.logits``: x (N, *x) plus either the direction seed or the q batches (q, N, *x)."""
    arrays = {X: down.x} if down.perturbed is None else {X: down.x, X_PERTURBED: down.perturbed}
    config: dict[str, int | float] = {
        SERVER_ROUND: down.server_round, NUM_DIRECTIONS: down.num_directions,
        SMOOTHING: down.smoothing,
    }
    if down.seed is not None:
        config[QUERY_SEED] = down.seed
    return RecordDict({INPUTS: pack_arrays(arrays), CONFIG: ConfigRecord(config)})


def decode_query(content: RecordDict) -> QueryDown:
    arrays = content.array_records[INPUTS]
    config = round_config(content)
    perturbed = arrays[X_PERTURBED].numpy() if X_PERTURBED in arrays else None
    return QueryDown(
        server_round=get_int(config, SERVER_ROUND, 0),
        x=torch.from_numpy(arrays[X].numpy().copy()),
        perturbed=torch.from_numpy(perturbed.copy()) if perturbed is not None else None,
        num_directions=get_int(config, NUM_DIRECTIONS),
        smoothing=get_float(config, SMOOTHING),
        seed=get_int(config, QUERY_SEED) if QUERY_SEED in config else None,
    )


@dataclass(frozen=True, slots=True)
class LogitsUp:
    """A ``query.logits`` reply: (1+q, N, C) logits and the client's ensemble weight."""

    logits: torch.Tensor
    num_examples: int


def encode_logits(up: LogitsUp) -> RecordDict:
    """``query.logits`` reply: ``outputs`` {``logits``: (1+q, N, C)} and ``num-examples``."""
    return RecordDict(
        {
            OUTPUTS: pack_arrays({LOGITS: up.logits.float()}),
            METRICS: MetricRecord({NUM_EXAMPLES: up.num_examples}),
        }
    )


def decode_logits(content: RecordDict) -> LogitsUp:
    logits = content.array_records[OUTPUTS][LOGITS].numpy().copy()
    return LogitsUp(torch.from_numpy(logits),
                    get_int(content.metric_records[METRICS], NUM_EXAMPLES))


@dataclass(frozen=True, slots=True)
class DistillDown:
    """A ``train.distill`` message: the ensemble logits ℓ̄(x) (N, C); the client kept x."""

    server_round: int
    soft_labels: torch.Tensor
    temperature: float
    steps: int  # E3


def encode_distill(down: DistillDown) -> RecordDict:
    config = {SERVER_ROUND: down.server_round, TEMPERATURE: down.temperature, STEPS: down.steps}
    return RecordDict({INPUTS: pack_arrays({SOFT_LABELS: down.soft_labels.float()}),
                       CONFIG: ConfigRecord(config)})


def decode_distill(content: RecordDict) -> DistillDown:
    soft = content.array_records[INPUTS][SOFT_LABELS].numpy().copy()
    config = round_config(content)
    return DistillDown(get_int(config, SERVER_ROUND, 0), torch.from_numpy(soft),
                       get_float(config, TEMPERATURE), get_int(config, STEPS))


def screen_logits_reply(content: RecordDict, shape: tuple[int, int, int]) -> str | None:
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
    return screen_metrics(content, QUERY_METRICS)


def screen_local_reply(content: RecordDict) -> str | None:
    """A ``train.local`` reply: metrics only (:data:`LOCAL_METRICS`), no arrays."""
    return screen_no_arrays(content, LOCAL_METRICS)


def screen_distill_reply(content: RecordDict) -> str | None:
    """A ``train.distill`` reply: metrics only (:data:`DISTILL_METRICS`), no arrays."""
    return screen_no_arrays(content, DISTILL_METRICS)
