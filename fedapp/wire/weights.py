"""The weights protocol (FedAvg, FedProx, FedGen): ``train`` and ``evaluate`` on a global model.

Server messages are Flower's own (``FedAvg.configure_train``/``configure_evaluate``):
``arrays`` (the global model) and ``config`` {``server-round``[, ``proximal-mu``]}.
A ``train`` reply carries ``arrays`` (same keys, shapes and dtypes), ``metrics``
(exactly :data:`~fedapp.wire.common.TRAIN_METRICS`) and ``client-info``; an
``evaluate`` reply ``metrics`` (exactly :data:`~fedapp.wire.common.EVAL_METRICS`), or,
from a node without local test data, "nothing to evaluate": ``metrics``
{``num-examples`` = 0} only (:func:`nothing_to_evaluate`), which the server counts
as ``skipped-evaluate``, neither failed nor rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedapp.wire.common import (
    ARRAYS,
    EVAL_ACC,
    EVAL_LOSS,
    EVAL_METRICS,
    METRICS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    TRAIN_METRICS,
    ClientInfo,
    TrainMetrics,
    get_float,
    pack_arrays,
    round_config,
    screen_arrays,
    screen_metrics,
    server_round,
    train_reply,
    unpack_arrays,
)

TRAIN = "train"  # Flower's MessageType.TRAIN
EVALUATE = "evaluate"  # Flower's MessageType.EVALUATE


@dataclass(frozen=True, slots=True)
class WeightsDown:
    """What a ``train`` or ``evaluate`` message tells a node."""

    server_round: int
    proximal_mu: float  # FedProx: add mu/2 * ||w - w_global||^2 (0: plain FedAvg)
    state: dict[str, torch.Tensor]  # the global model


def decode_down(content: RecordDict) -> WeightsDown:
    return WeightsDown(
        server_round=server_round(content),
        proximal_mu=get_float(round_config(content), PROXIMAL_MU, 0.0),
        state=unpack_arrays(content),
    )


def encode_train_reply(
    state: dict[str, torch.Tensor], metrics: TrainMetrics, info: ClientInfo
) -> RecordDict:
    """``arrays``, ``metrics`` (exactly :data:`TRAIN_METRICS`) and ``client-info``."""
    return train_reply({ARRAYS: pack_arrays(state)}, metrics, info)


def screen_train_reply(content: RecordDict, reference: ArrayRecord) -> str | None:
    """Why a train reply must not be aggregated, or ``None`` when it is sound.

    Checks: exactly the ``arrays`` ArrayRecord with the reference's keys, shapes
    and dtypes, all finite; ``metrics`` with exactly :data:`TRAIN_METRICS`, finite,
    ``num-examples`` > 0.
    """
    if set(content.array_records) != {ARRAYS}:
        return f"array records {sorted(content.array_records)} != ['{ARRAYS}']"
    return screen_arrays(content.array_records[ARRAYS], reference) or screen_metrics(
        content, TRAIN_METRICS
    )


@dataclass(frozen=True, slots=True)
class EvalUp:
    """An ``evaluate`` reply: the model on the node's local test split."""

    num_examples: int
    loss: float
    accuracy: float


def encode_eval_reply(result: EvalUp) -> RecordDict:
    """The reply's metrics; "nothing to evaluate" when the local test split is empty."""
    if result.num_examples == 0:
        return RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 0})})
    return RecordDict({METRICS: MetricRecord(
        {NUM_EXAMPLES: result.num_examples, EVAL_LOSS: result.loss, EVAL_ACC: result.accuracy}
    )})


def nothing_to_evaluate(content: RecordDict) -> bool:
    """Whether an evaluate reply says "nothing to evaluate": exactly ``metrics`` {``num-examples``: 0}."""
    if content.array_records or set(content.metric_records) != {METRICS}:
        return False
    metrics = content.metric_records[METRICS]
    return set(metrics) == {NUM_EXAMPLES} and metrics[NUM_EXAMPLES] == 0


def screen_eval_reply(content: RecordDict) -> str | None:
    """Why an evaluate reply must not be aggregated, or ``None`` when it is sound."""
    return screen_metrics(content, EVAL_METRICS)
