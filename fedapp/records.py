"""The wire contract: message keys, reply codecs, reply screening and byte counts.

Every record key the server and clients exchange is a constant here, so a
rename is one edit. Train replies of every trainer carry the same metric keys
(:data:`TRAIN_METRICS`), which is what lets Flower's FedAvg aggregate mixed
federations; per-client facts that must not be averaged (label counts) travel
in a ConfigRecord (:data:`CLIENT_INFO`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedapp.task import zo
from fedapp.task.fedgen import RegularizerRound
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
    info = client_info(partition_id, trainer, model, label_counts)
    return _train_reply({ARRAYS: arrays}, metrics, info)


def _train_reply(
    payload: Mapping[str, ArrayRecord], metrics: Mapping[str, float | int], info: ConfigRecord
) -> RecordDict:
    """A train reply of any strategy: its ``payload`` records, :data:`TRAIN_METRICS`, ``info``."""
    metric_record = MetricRecord({k: metrics[k] for k in TRAIN_METRICS})
    return RecordDict({**payload, METRICS: metric_record, CLIENT_INFO: info})


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
    return _screen_arrays(content.array_records[ARRAYS], reference) or _screen_metrics(
        content, TRAIN_METRICS
    )


def _screen_arrays(arrays: ArrayRecord, reference: ArrayRecord, name: str = "array") -> str | None:
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


def screen_eval_reply(content: RecordDict) -> str | None:
    """Why an evaluate reply must not be aggregated, or ``None`` when it is sound."""
    return _screen_metrics(content, EVAL_METRICS)


# --- node state: torch state dicts persisted in ``context.state`` ---

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


# --- zo-seed (SPEC §6.3-6.4): seeds and scalars instead of weights ---

TRAIN_SEEDS = "train.seeds"  # message types of the zo-seed strategy
EVALUATE_SEEDS = "evaluate.seeds"

ZO_HISTORY = "zo-history"  # down: the aggregate steps of the rounds the node missed
ZO_MODEL = "zo-model"  # down, bootstrap only: the full model (gap > zo.catchup-max-rounds)
ZO_BUFFERS = "zo-buffers"  # both ways: BatchNorm running statistics (zo.sync-buffers)
ZO_STEPS = "zo-steps"  # up: this node's projected-gradient scalars (and seeds if its own)
ZO_TARGET_ROUND = "zo-target-round"  # the round whose model the node must hold after catch-up
ZO_SEED_BASE = "zo-seed-base"  # the base seed of this round's perturbations
ZO_LR = "zo-lr"  # η_t of this round
ZO_REPLICA = "zo-replica"  # context.state: the node's copy of the global model
ZO_SYNC = "zo-sync"  # context.state: {"round": the round that copy belongs to}

_META = "meta"  # (R, 5) int64: round, seed base, steps, pairs per step, P
_RATES = "rates"  # (R, 2) float64: lr, weight decay
_SCALARS = "scalars"  # (N,) float32
_SEEDS = "seeds"  # (N,) int64; only when seeds are not derivable (zo.seed-source = client)


def _arr(values: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(values))


def pack_zo_history(rounds: list[zo.ZORound], explicit_seeds: bool) -> ArrayRecord:
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
        _SCALARS: _arr(np.asarray(scalars, dtype=np.float32)),
    }
    if explicit_seeds:
        record[_SEEDS] = _arr(np.asarray(seeds, dtype=np.int64))
    return ArrayRecord(record)


def unpack_zo_history(record: ArrayRecord) -> list[zo.ZORound]:
    """Inverse of :func:`pack_zo_history`; implicit seeds are re-derived from the seed base."""
    meta, rates = record[_META].numpy(), record[_RATES].numpy()
    scalars = record[_SCALARS].numpy()
    seeds = record[_SEEDS].numpy() if _SEEDS in record else None
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


def pack_zo_down(
    server_round: int, target_round: int, seed_base: int, lr: float,
    history: list[zo.ZORound], explicit_seeds: bool,
    buffers: Mapping[str, torch.Tensor] | None, model: Mapping[str, torch.Tensor] | None,
) -> RecordDict:
    """The downlink: config, the missed history, averaged buffers, and the model only to bootstrap."""
    content = RecordDict(
        {
            CONFIG: ConfigRecord(
                {
                    SERVER_ROUND: server_round,
                    ZO_TARGET_ROUND: target_round,
                    ZO_SEED_BASE: seed_base,
                    ZO_LR: lr,
                }
            ),
            ZO_HISTORY: pack_zo_history(history, explicit_seeds),
        }
    )
    if buffers:
        content[ZO_BUFFERS] = pack_arrays(buffers)
    if model is not None:
        content[ZO_MODEL] = pack_arrays(model)
    return content


def unpack_zo_down(content: RecordDict) -> ZODownlink:
    config = round_config(content)
    arrays = content.array_records
    return ZODownlink(
        server_round=int(config[SERVER_ROUND]),  # type: ignore[arg-type]
        target_round=int(config[ZO_TARGET_ROUND]),  # type: ignore[arg-type]
        seed_base=int(config[ZO_SEED_BASE]),  # type: ignore[arg-type]
        lr=float(config[ZO_LR]),  # type: ignore[arg-type]
        history=unpack_zo_history(arrays[ZO_HISTORY]),
        buffers=unpack_arrays(content, ZO_BUFFERS) if ZO_BUFFERS in arrays else None,
        model=unpack_arrays(content, ZO_MODEL) if ZO_MODEL in arrays else None,
    )


def pack_zo_train_reply(
    steps: list[zo.ZOStep], explicit_seeds: bool, buffers: Mapping[str, torch.Tensor] | None,
    metrics: Mapping[str, float | int], partition_id: int, trainer: str, model: str,
    label_counts: list[int],
) -> RecordDict:
    """``zo-steps`` (H·P scalars, float32; seeds only if the node drew its own), buffers, metrics."""
    record = {_SCALARS: _arr(np.asarray([g for s in steps for g in s.grads], dtype=np.float32))}
    if explicit_seeds:
        record[_SEEDS] = _arr(np.asarray([x for s in steps for x in s.seeds], dtype=np.int64))
    payload = {ZO_STEPS: ArrayRecord(record)}
    if buffers:
        payload[ZO_BUFFERS] = pack_arrays(buffers)
    info = client_info(partition_id, trainer, model, label_counts)
    return _train_reply(payload, metrics, info)


def unpack_zo_steps(content: RecordDict) -> tuple[np.ndarray, np.ndarray | None]:
    """A screened reply's scalars (N,) float32 and its seeds (N,) int64 (``None`` if implicit)."""
    record = content.array_records[ZO_STEPS]
    seeds = record[_SEEDS].numpy() if _SEEDS in record else None
    return record[_SCALARS].numpy(), seeds


def screen_zo_train_reply(
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
    keys = [_SCALARS, _SEEDS] if explicit_seeds else [_SCALARS]
    if sorted(record) != sorted(keys):
        return f"{ZO_STEPS} keys {sorted(record)} != {sorted(keys)}"
    for key, dtype in ((_SCALARS, "float32"), (_SEEDS, "int64")):
        if key in record and (record[key].dtype != dtype or tuple(record[key].shape) != (num_pairs,)):
            return (f"{ZO_STEPS}[{key!r}] is {record[key].dtype}{list(record[key].shape)}, "
                    f"expected {dtype}[{num_pairs}]")
    if not np.isfinite(record[_SCALARS].numpy()).all():
        return f"{ZO_STEPS} has NaN/Inf scalars"
    if buffers:
        reason = _screen_arrays(content.array_records[ZO_BUFFERS], buffers, ZO_BUFFERS)
        if reason:
            return reason
    return _screen_metrics(content, TRAIN_METRICS)


def load_zo_replica(state: RecordDict) -> tuple[dict[str, torch.Tensor], int] | None:
    """This node's replica of the global model and the round it belongs to, if it has one."""
    saved = load_state(state, ZO_REPLICA)
    if saved is None:
        return None
    return saved, int(state.config_records[ZO_SYNC]["round"])  # type: ignore[arg-type]


def save_zo_replica(state: RecordDict, state_dict: Mapping[str, torch.Tensor], synced: int) -> None:
    save_state(state, ZO_REPLICA, state_dict)
    state[ZO_SYNC] = ConfigRecord({"round": synced})


# --- FedGen: the generator rides on `train` from round 2 ---

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


# --- HERON-SFL / CSE-FSL: the split wire (train.split) ---

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


# --- FedZGE (SPEC §3.2): train.local, query.logits, train.distill ---

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


# --- FedVTC (our reading of Niu, Dong, Qin, arXiv 2508.01669; SPEC §5) ---

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
    info = client_info(partition_id, trainer, model, label_counts)
    return _train_reply({VTC_STATS: pack_stats(stats)}, metrics, info)


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
