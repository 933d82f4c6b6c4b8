"""The split protocol of HERON-SFL / CSE-FSL (``train.split``).

Down: ``front`` (θ_c), ``aux`` (θ_a) and ``config`` {``server-round``,
``local-steps`` (h), ``upload-every`` (k), ``smoothing`` (μ), ``lr`` (η_l)}; never
gradients, activations or θ_s. Up: ``front``, ``aux`` (same keys, shapes, dtypes),
``activations`` {``acts`` (N, *cut) float32, ``labels`` (N,) int64,
``batch-sizes`` (U,) int64}, ``metrics`` (:data:`SPLIT_METRICS`) and ``client-info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedapp.wire.common import (
    CLIENT_INFO,
    CONFIG,
    METRICS,
    SERVER_ROUND,
    SMOOTHING,
    STEP_FLOPS,
    STEP_PEAK_MEM_MB,
    STEPS,
    TRAIN_METRICS,
    UPLOADS,
    ClientInfo,
    TrainMetrics,
    WireError,
    content_bytes,
    decode_client_info,
    get_float,
    get_int,
    metrics_record,
    pack_arrays,
    round_config,
    screen_arrays,
    screen_metrics,
    unpack_arrays,
)

TRAIN_SPLIT = "train.split"
FRONT = "front"  # θ_c: client front-end state dict (keys of the full model)
AUX = "aux"  # θ_a: client auxiliary head state dict
ACTIVATIONS = "activations"  # smashed data of every k-th local step
ACTS = "acts"  # (N, *cut) float32: the U uploaded batches, concatenated
LABELS = "labels"  # (N,) int64
BATCH_SIZES = "batch-sizes"  # (U,) int64, summing to N
LOCAL_STEPS = "local-steps"  # h
UPLOAD_EVERY = "upload-every"  # k
LR = "lr"  # η_l

SPLIT_METRICS = (*TRAIN_METRICS, STEPS, STEP_FLOPS, STEP_PEAK_MEM_MB, UPLOADS)


@dataclass(frozen=True, slots=True)
class SplitDown:
    """A ``train.split`` message: the client parts and this round's local settings."""

    server_round: int
    local_steps: int  # h; 0: one pass over the local data
    upload_every: int  # k
    smoothing: float  # μ
    lr: float  # η_l
    front: dict[str, torch.Tensor]
    aux: dict[str, torch.Tensor]


def encode_down(down: SplitDown) -> RecordDict:
    """Server -> client: θ_c, θ_a and the round config; never gradients or activations."""
    config = ConfigRecord({
        SERVER_ROUND: down.server_round,
        LOCAL_STEPS: down.local_steps,
        UPLOAD_EVERY: down.upload_every,
        SMOOTHING: down.smoothing,
        LR: down.lr,
    })
    return RecordDict({FRONT: pack_arrays(down.front), AUX: pack_arrays(down.aux), CONFIG: config})


def decode_down(content: RecordDict) -> SplitDown:
    config = round_config(content)
    return SplitDown(
        server_round=get_int(config, SERVER_ROUND),
        local_steps=get_int(config, LOCAL_STEPS),
        upload_every=get_int(config, UPLOAD_EVERY),
        smoothing=get_float(config, SMOOTHING),
        lr=get_float(config, LR),
        front=unpack_arrays(content, FRONT),
        aux=unpack_arrays(content, AUX),
    )


@dataclass(frozen=True, slots=True)
class SplitMetrics:
    """:data:`SPLIT_METRICS`: the train metrics plus the cost of one measured local step."""

    train: TrainMetrics
    steps: int  # local steps taken (h)
    step_flops: int
    step_peak_mem_mb: float
    uploads: int  # U

    def values(self) -> dict[str, int | float]:
        return self.train.values() | {
            STEPS: self.steps,
            STEP_FLOPS: self.step_flops,
            STEP_PEAK_MEM_MB: self.step_peak_mem_mb,
            UPLOADS: self.uploads,
        }


@dataclass(frozen=True, slots=True)
class SplitUp:
    """A ``train.split`` reply: θ_c, θ_a, the smashed batches, metrics and client info."""

    front: dict[str, torch.Tensor]
    aux: dict[str, torch.Tensor]
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # (acts (B_u, *cut), labels (B_u,)), in order
    metrics: SplitMetrics
    info: ClientInfo
    bytes_acts: int  # wire bytes of the activations record
    bytes_weights: int  # wire bytes of the front and aux records


def encode_up(
    front: Mapping[str, torch.Tensor],
    aux: Mapping[str, torch.Tensor],
    acts: torch.Tensor,
    labels: torch.Tensor,
    batch_sizes: list[int],
    metrics: SplitMetrics,
    info: ClientInfo,
) -> RecordDict:
    """Client -> server: θ_c, θ_a, the smashed batches, :data:`SPLIT_METRICS`, ``client-info``."""
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
            METRICS: metrics_record(metrics.values(), SPLIT_METRICS),
            CLIENT_INFO: info.record(),
        }
    )


def decode_up(content: RecordDict) -> SplitUp:
    """A screened reply as typed values (raises :class:`WireError` without ``client-info``)."""
    record = content.array_records[ACTIVATIONS]
    acts, labels = (torch.from_numpy(record[k].numpy()) for k in (ACTS, LABELS))
    sizes = [int(s) for s in record[BATCH_SIZES].numpy()]
    info = decode_client_info(content)
    if info is None:
        raise WireError(f"train.split reply without a usable {CLIENT_INFO!r}")
    m = content.metric_records[METRICS]
    return SplitUp(
        front=unpack_arrays(content, FRONT),
        aux=unpack_arrays(content, AUX),
        batches=list(zip(acts.split(sizes), labels.split(sizes), strict=True)),
        metrics=SplitMetrics(
            TrainMetrics.decode(content), get_int(m, STEPS), get_int(m, STEP_FLOPS),
            get_float(m, STEP_PEAK_MEM_MB), get_int(m, UPLOADS),
        ),
        info=info,
        bytes_acts=content_bytes(RecordDict({ACTIVATIONS: content[ACTIVATIONS]})),
        bytes_weights=content_bytes(RecordDict({k: content[k] for k in (FRONT, AUX)})),
    )


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


def screen_up(
    content: RecordDict, sent: RecordDict, cut_shape: tuple[int, ...], num_classes: int,
) -> str | None:
    """Why a ``train.split`` reply to ``sent`` must not be used, or ``None`` when it is sound.

    Checks: exactly the ``front``, ``aux`` and ``activations`` ArrayRecords;
    front and aux with the sent keys, shapes and dtypes, all finite; activations
    float32 (N, *cut_shape) and finite, labels int64 (N,) in [0, C), batch sizes
    positive and summing to N; metrics exactly :data:`SPLIT_METRICS`, finite.
    """
    expected = {FRONT, AUX, ACTIVATIONS}
    if set(content.array_records) != expected:
        return f"array records {sorted(content.array_records)} != {sorted(expected)}"
    for name in (FRONT, AUX):
        reason = screen_arrays(content.array_records[name], sent.array_records[name], name)
        if reason is not None:
            return reason
    reason = _screen_activations(content.array_records[ACTIVATIONS], cut_shape, num_classes)
    if reason is not None:
        return reason
    return screen_metrics(content, SPLIT_METRICS)
