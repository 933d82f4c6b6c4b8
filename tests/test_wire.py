"""Wire contract: codecs round-trip, replies pass FedAvg's checks, bad replies are screened."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from fedapp.task.models import ImageSpec, build_model
from fedapp.wire import weights
from fedapp.wire.common import (
    ARRAYS,
    METRICS,
    ClientInfo,
    TrainMetrics,
    content_bytes,
    match_dtypes,
    pack_arrays,
    unpack_arrays,
)

TRAIN = {
    "num-examples": 10,
    "train-loss": 0.5,
    "forward-passes": 3,
    "backward-passes": 3,
    "peak-mem-mb": 100.0,
    "train-s": 0.1,
}


@pytest.fixture
def reference() -> ArrayRecord:
    model = build_model("fedgen-cnn", ImageSpec(1, 8, 8, 10), seed=0)
    return pack_arrays(model.state_dict())


def reply(arrays: ArrayRecord, **metric_overrides: object) -> RecordDict:
    values = {**TRAIN, **metric_overrides}
    metrics = TrainMetrics(*values.values())  # type: ignore[arg-type]
    return weights.encode_train_reply(
        arrays.to_torch_state_dict(), metrics, ClientInfo(0, "fo", "fedgen-cnn", [1] * 10)
    )


def with_array(ref: ArrayRecord, key: str, value: np.ndarray) -> ArrayRecord:
    out = {k: v for k, v in ref.items()}
    out[key] = Array(value)
    return ArrayRecord(out)


def test_state_dict_round_trip(reference: ArrayRecord) -> None:
    model = build_model("fedgen-cnn", ImageSpec(1, 8, 8, 10), seed=0)
    content = RecordDict({ARRAYS: reference})
    restored = unpack_arrays(content)
    for k, v in model.state_dict().items():
        assert torch.equal(restored[k], v) and restored[k].dtype == v.dtype


def test_sound_replies_pass_screening_and_fedavg_validation(reference: ArrayRecord) -> None:
    replies = [reply(reference), reply(reference, **{"num-examples": 3})]
    assert all(weights.screen_train_reply(r, reference) is None for r in replies)
    validate_message_reply_consistency(replies, "num-examples", check_arrayrecord=True)
    evals = [weights.encode_eval_reply(weights.EvalUp(5, 0.3, 0.9))]
    assert weights.screen_eval_reply(evals[0]) is None
    validate_message_reply_consistency(evals, "num-examples", check_arrayrecord=False)


def _first_float(ref: ArrayRecord) -> tuple[str, np.ndarray]:
    key = next(k for k, v in ref.items() if v.dtype == "float32")
    return key, ref[key].numpy()


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda r: reply(with_array(r, _first_float(r)[0], _first_float(r)[1] * np.nan)), "NaN/Inf"),
        (lambda r: reply(with_array(r, _first_float(r)[0], _first_float(r)[1] + np.inf)), "NaN/Inf"),
        (lambda r: reply(with_array(r, _first_float(r)[0], _first_float(r)[1][:1])), "expected float32"),
        (lambda r: reply(with_array(r, _first_float(r)[0], _first_float(r)[1].astype(np.float64))), "is float64"),
        (lambda r: reply(ArrayRecord({k: v for k, v in list(r.items())[1:]})), "array keys differ"),
        (lambda r: reply(r, **{"train-loss": float("nan")}), "non-finite metrics ['train-loss']"),
        (lambda r: reply(r, **{"num-examples": 0}), "is not a positive scalar"),
        (
            lambda r: RecordDict({ARRAYS: r, METRICS: MetricRecord({"num-examples": 1})}),
            "metric keys",
        ),
        (
            lambda r: RecordDict(
                {"weights": r, METRICS: MetricRecord(TRAIN), "x": ConfigRecord({"a": 1})}
            ),
            "array records ['weights']",
        ),
    ],
)
def test_crafted_bad_replies_are_rejected(reference: ArrayRecord, corrupt, reason: str) -> None:
    why = weights.screen_train_reply(corrupt(reference), reference)
    assert why is not None and reason in why


def test_match_dtypes_restores_integer_buffers(reference: ArrayRecord) -> None:
    averaged = ArrayRecord({k: Array(np.asarray(v.numpy().astype(np.float64))) for k, v in reference.items()})
    fixed = match_dtypes(averaged, reference)
    for k, v in reference.items():
        assert fixed[k].dtype == v.dtype and fixed[k].shape == v.shape
        np.testing.assert_array_equal(fixed[k].numpy(), v.numpy())


def test_content_bytes_counts_array_payload(reference: ArrayRecord) -> None:
    payload = sum(v.numpy().nbytes for v in reference.values())
    size = content_bytes(RecordDict({ARRAYS: reference}))
    assert payload <= size < payload + 256 * len(reference)  # data plus .npy header and key
