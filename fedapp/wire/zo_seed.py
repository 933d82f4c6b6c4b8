"""The zo-seed protocol (``train.seeds``, ``evaluate.seeds``): seeds and scalars, not weights.

Contract of docs/strategies/zo-seed.md (Wire contract). Down: ``config``
{``server-round``, ``zo-target-round``, ``zo-seed-base``, ``zo-lr``,
``zo-keep-rounds``}, ``zo-history``
(the aggregate steps of the rounds the node missed), ``zo-buffers`` when BatchNorm
buffers are synced, ``zo-model`` only to bootstrap. Up (``train.seeds``):
``zo-steps`` {``scalars`` (H·P,) float32[, ``seeds`` (H·P,) int64]},
``zo-buffers``, ``metrics`` (:data:`~fedapp.wire.common.TRAIN_METRICS`) and
``client-info``; ``evaluate.seeds`` replies as the weights protocol's ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedapp.task import zo
from fedapp.wire.common import (
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    TRAIN_METRICS,
    ClientInfo,
    TrainMetrics,
    get_float,
    WireError,
    get_int,
    pack_arrays,
    round_config,
    screen_arrays,
    screen_metrics,
    train_reply,
    unpack_arrays,
)

TRAIN_SEEDS = "train.seeds"  # message types of the zo-seed strategy
EVALUATE_SEEDS = "evaluate.seeds"

ZO_HISTORY = "zo-history"  # down: the aggregate steps of the rounds the node missed
ZO_MODEL = "zo-model"  # down, bootstrap only: the full model (gap > zo.catchup-max-rounds)
ZO_BUFFERS = "zo-buffers"  # both ways: BatchNorm running statistics (zo.sync-buffers)
ZO_STEPS = "zo-steps"  # up: this node's projected-gradient scalars (and seeds if its own)
ZO_TARGET_ROUND = "zo-target-round"  # the round whose model the node must hold after catch-up
ZO_SEED_BASE = "zo-seed-base"  # the base seed of this round's perturbations
ZO_LR = "zo-lr"  # η_t of this round
ZO_KEEP_ROUNDS = "zo-keep-rounds"  # the largest gap still caught up by history (0: no limit)
ZO_SYNC = "zo-sync"  # context.state: {"space", "round", "key"}: the replica this node holds
SYNC_ROUND = "round"
SYNC_KEY = "key"
SYNC_SPACE = "space"

_META = "meta"  # (R, 5) int64: round, seed base, steps, pairs per step, P
_RATES = "rates"  # (R, 2) float64: lr, weight decay
SCALARS = "scalars"  # (N,) float32
SEEDS = "seeds"  # (N,) int64; only when seeds are not derivable (zo.seed-source = client)


def _arr(values: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(values))


def pack_history(rounds: list[zo.ZORound], explicit_seeds: bool) -> ArrayRecord:
    """History rounds as four flat arrays (seeds only when ``explicit_seeds``)."""
    meta, rates, scalars, seeds = [], [], [], []
    for r in rounds:
        first = r.steps[0] if r.steps else zo.ZOStep((), (), 0.0, 1)
        meta.append([r.round, r.seed_base, len(r.steps), len(first.seeds), first.num_directions])
        rates.append([first.lr, first.weight_decay])
        for step in r.steps:
            scalars.extend(step.grads)
            seeds.extend(step.seeds)
    record = {
        _META: _arr(np.asarray(meta, dtype=np.int64).reshape(-1, 5)),
        _RATES: _arr(np.asarray(rates, dtype=np.float64).reshape(-1, 2)),
        SCALARS: _arr(np.asarray(scalars, dtype=np.float32)),
    }
    if explicit_seeds:
        record[SEEDS] = _arr(np.asarray(seeds, dtype=np.int64))
    return ArrayRecord(record)


def unpack_history(record: ArrayRecord) -> list[zo.ZORound]:
    """Inverse of :func:`pack_history`; implicit seeds are re-derived from the seed base."""
    meta, rates = record[_META].numpy(), record[_RATES].numpy()
    scalars = record[SCALARS].numpy()
    seeds = record[SEEDS].numpy() if SEEDS in record else None
    rounds, at = [], 0
    for (t, base, num_steps, pairs, p), (lr, wd) in zip(meta.tolist(), rates.tolist(), strict=True):
        steps = []
        for h in range(num_steps):
            step_seeds = (
                seeds[at : at + pairs].tolist() if seeds is not None
                else zo.step_seeds(base, h, p)
            )
            grads = scalars[at : at + pairs].tolist()
            steps.append(zo.ZOStep(tuple(step_seeds), tuple(grads), lr, p, wd))
            at += pairs
        rounds.append(zo.ZORound(t, base, tuple(steps)))
    return rounds


@dataclass(frozen=True, slots=True)
class ZODownlink:
    """What a ``train.seeds`` / ``evaluate.seeds`` message tells a node."""

    server_round: int
    target_round: int
    seed_base: int
    lr: float
    history: list[zo.ZORound]
    buffers: dict[str, torch.Tensor] | None
    model: dict[str, torch.Tensor] | None
    keep_rounds: int = 0  # nodes may forget replicas older than target_round - keep_rounds


def encode_down(
    down: ZODownlink, explicit_seeds: bool,
) -> RecordDict:
    """The downlink: config, the missed history, averaged buffers, and the model only to bootstrap."""
    content = RecordDict(
        {
            CONFIG: ConfigRecord(
                {
                    SERVER_ROUND: down.server_round,
                    ZO_TARGET_ROUND: down.target_round,
                    ZO_SEED_BASE: down.seed_base,
                    ZO_LR: down.lr,
                    ZO_KEEP_ROUNDS: down.keep_rounds,
                }
            ),
            ZO_HISTORY: pack_history(down.history, explicit_seeds),
        }
    )
    if down.buffers:
        content[ZO_BUFFERS] = pack_arrays(down.buffers)
    if down.model is not None:
        content[ZO_MODEL] = pack_arrays(down.model)
    return content


def decode_down(content: RecordDict) -> ZODownlink:
    config = round_config(content)
    arrays = content.array_records
    return ZODownlink(
        server_round=get_int(config, SERVER_ROUND),
        target_round=get_int(config, ZO_TARGET_ROUND),
        seed_base=get_int(config, ZO_SEED_BASE),
        lr=get_float(config, ZO_LR),
        history=unpack_history(arrays[ZO_HISTORY]),
        buffers=unpack_arrays(content, ZO_BUFFERS) if ZO_BUFFERS in arrays else None,
        model=unpack_arrays(content, ZO_MODEL) if ZO_MODEL in arrays else None,
        keep_rounds=get_int(config, ZO_KEEP_ROUNDS),
    )


def encode_train_reply(
    steps: tuple[zo.ZOStep, ...], explicit_seeds: bool,
    buffers: Mapping[str, torch.Tensor] | None, metrics: TrainMetrics, info: ClientInfo,
) -> RecordDict:
    """``zo-steps`` (H·P scalars, float32; seeds only if the node drew its own), buffers, metrics."""
    record = {SCALARS: _arr(np.asarray([g for s in steps for g in s.grads], dtype=np.float32))}
    if explicit_seeds:
        record[SEEDS] = _arr(np.asarray([x for s in steps for x in s.seeds], dtype=np.int64))
    payload = {ZO_STEPS: ArrayRecord(record)}
    if buffers:
        payload[ZO_BUFFERS] = pack_arrays(buffers)
    return train_reply(payload, metrics, info)


@dataclass(frozen=True, slots=True)
class ZOUplink:
    """A screened ``train.seeds`` reply."""

    scalars: np.ndarray  # (N,) float32
    seeds: np.ndarray | None  # (N,) int64; None when derivable from the seed base
    buffers: dict[str, torch.Tensor] | None
    num_examples: int


def decode_up(content: RecordDict) -> ZOUplink:
    record = content.array_records[ZO_STEPS]
    return ZOUplink(
        scalars=record[SCALARS].numpy(),
        seeds=record[SEEDS].numpy() if SEEDS in record else None,
        buffers=unpack_arrays(content, ZO_BUFFERS) if ZO_BUFFERS in content.array_records else None,
        num_examples=get_int(content.metric_records[METRICS], NUM_EXAMPLES),
    )


def screen_train_reply(
    content: RecordDict, num_pairs: int, explicit_seeds: bool, buffers: ArrayRecord | None
) -> str | None:
    """Why a ``train.seeds`` reply must not be aggregated, or ``None`` when it is sound.

    Checks: ``zo-steps`` with exactly ``num_pairs`` finite float32 scalars (and as
    many int64 seeds when nodes draw their own), ``zo-buffers`` like the server's
    when buffers are synced, no other arrays; metrics as for ``train``.
    """
    expected = {ZO_STEPS} | ({ZO_BUFFERS} if buffers else set())
    if set(content.array_records) != expected:
        return f"array records {sorted(content.array_records)} != {sorted(expected)}"
    record = content.array_records[ZO_STEPS]
    keys = [SCALARS, SEEDS] if explicit_seeds else [SCALARS]
    if sorted(record) != sorted(keys):
        return f"{ZO_STEPS} keys {sorted(record)} != {sorted(keys)}"
    for key, dtype in ((SCALARS, "float32"), (SEEDS, "int64")):
        if key in record and (record[key].dtype != dtype or tuple(record[key].shape) != (num_pairs,)):
            return (f"{ZO_STEPS}[{key!r}] is {record[key].dtype}{list(record[key].shape)}, "
                    f"expected {dtype}[{num_pairs}]")
    if not np.isfinite(record[SCALARS].numpy()).all():
        return f"{ZO_STEPS} has NaN/Inf scalars"
    if buffers:
        reason = screen_arrays(content.array_records[ZO_BUFFERS], buffers, ZO_BUFFERS)
        if reason:
            return reason
    return screen_metrics(content, TRAIN_METRICS)


def load_sync(state: RecordDict) -> tuple[str, int, str] | None:
    """The store space, round and key of the replica this node holds, if any.

    The replica itself is shared by key (:mod:`clients.replicas`).
    """
    if ZO_SYNC not in state.config_records:
        return None
    record = state.config_records[ZO_SYNC]
    space, key = record[SYNC_SPACE], record[SYNC_KEY]
    if not isinstance(key, str) or not isinstance(space, str):
        raise WireError(f"node state {ZO_SYNC!r} holds a non-string space or key")
    return space, get_int(record, SYNC_ROUND), key


def save_sync(state: RecordDict, space: str, synced: int, key: str) -> None:
    """Remember the replica's space, round and key (a few bytes, not the model)."""
    state[ZO_SYNC] = ConfigRecord({SYNC_SPACE: space, SYNC_ROUND: synced, SYNC_KEY: key})
