"""FedAvg and FedProx: whole server runs in process, and ``aggregate_train`` on crafted replies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedapp.client_app import app as client_app
from fedapp.config import load_config
from fedapp.harness import InProcessGrid
from fedapp.results import NothingAggregated, read_rounds
from fedapp.server_app import main
from fedapp.wire import weights
from fedapp.wire.common import PROXIMAL_MU, ClientInfo, TrainMetrics, content_bytes
from strategies import STRATEGIES, build_strategy
from strategies.fedavg import ScreenedFedAvg


def run(cfg: dict, num_nodes: int = 3, **grid_kwargs) -> tuple[InProcessGrid, Path]:
    grid = InProcessGrid(client_app, cfg, num_nodes, **grid_kwargs)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return grid, Path(cfg["output-dir"]) / cfg["run-name"]


@pytest.fixture
def small(run_config: dict) -> dict:
    return {
        **run_config,
        "data.dataset": "digits",
        "data.partition": "iid",
        "num-server-rounds": 2,
        "client.lr": 0.1,
        "client.local-epochs": 2,
    }


def test_registry_builds_every_strategy(run_config: dict) -> None:
    for name, card in STRATEGIES.items():
        models = ",".join(card.client_models)
        cfg = load_config({**run_config, "strategy": name, "client.trainer": card.default_trainer,
                           "model.clients": models})
        assert card.default_trainer in card.trainers
        assert build_strategy(cfg) is not None


def test_nan_reply_is_rejected_and_the_run_completes(small: dict) -> None:
    grid, out = run({**small, "client.fault": "nan", "client.fault-partitions": "1"})
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert (r["clients"], r["rejected"], r["failed-train"], r["sampled"]) == (2, 1, 0, 3)
    assert rows[-1]["accuracy"] > 0.3  # well above chance (0.1) on digits
    saved = torch.load(out / "model.pt", weights_only=False)
    assert saved["round"] == 2
    assert all(torch.isfinite(v.float()).all() for v in saved["state_dict"].values())
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == small["seed"] and "flwr" in config["versions"]
    assert config["config"]["client"]["fault"] == "nan"
    assert (out / "curves.png").stat().st_size > 10_000
    clients = json.loads((out / "clients.json").read_text())
    assert sorted(clients) == ["0", "2"]  # partition 1 never got through screening


def test_bytes_are_counted_from_the_records_sent_and_received(small: dict) -> None:
    grid, out = run(small)
    rows = read_rounds(out)
    sent = sum(content_bytes(m.content) for m in grid.sent)
    received = sum(content_bytes(m.content) for m in grid.received)
    assert sum(r["bytes-down"] for r in rows) == sent
    assert sum(r["bytes-up"] for r in rows) == received
    model_bytes = content_bytes(RecordDict({"arrays": grid.sent[0].content["arrays"]}))
    assert rows[1]["bytes-down"] >= 2 * 3 * model_bytes  # train + evaluate to 3 nodes


def test_failed_and_missing_replies_are_counted(small: dict) -> None:
    cfg = {**small, "client.fault": "raise", "client.fault-partitions": "0"}
    drop_node_2 = lambda m: m.metadata.dst_node_id == 102 and m.metadata.message_type == "train"
    _, out = run(cfg, drop=drop_node_2)
    for r in read_rounds(out)[1:]:
        assert (r["clients"], r["failed-train"], r["failed-evaluate"], r["rejected"]) == (1, 2, 0, 0)


def test_all_rejected_keeps_the_previous_model(small: dict) -> None:
    with pytest.raises(NothingAggregated):  # the run ends failed, its results kept
        run({**small, "client.fault": "shape", "client.fault-partitions": "0,1,2"})
    rows = read_rounds(Path(small["output-dir"]) / small["run-name"])
    assert all(r["rejected"] == 3 and r["clients"] == 0 for r in rows[1:])
    assert rows[2]["accuracy"] == rows[1]["accuracy"] == rows[0]["accuracy"]


def test_fedprox_sends_mu_and_clients_use_it(small: dict) -> None:
    grid, out = run({**small, "strategy": "fedprox", "fedprox.mu": 0.5})
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert train and all(m.content["config"][PROXIMAL_MU] == 0.5 for m in train)
    assert read_rounds(out)[-1]["accuracy"] > 0.3


# ---- aggregate_train called directly with crafted replies (no ServerApp, no clients) ----


def _prepare_strategy(run_config: dict) -> tuple[ScreenedFedAvg, ArrayRecord]:
    """FedAvg over two nodes, configured for round 1 of a two-tensor model."""
    strategy = build_strategy(load_config(run_config))
    reference = ArrayRecord({"w": torch.zeros(2), "n": torch.tensor(0)})
    grid = InProcessGrid(client_app, run_config, num_nodes=2)  # clients are never called
    sent = list(strategy.configure_train(1, reference, ConfigRecord(), grid))
    assert len(sent) == 2 and isinstance(strategy, ScreenedFedAvg)
    return strategy, reference


def create_mock_reply(sent: Message, w: list[float], n: int, examples: int) -> Message:
    metrics = TrainMetrics(examples, 0.5, 1, 1, 1.0, 0.1)
    info = ClientInfo(sent.metadata.dst_node_id - 100, "fo", "mlp", [examples])
    content = weights.encode_train_reply({"w": torch.tensor(w), "n": torch.tensor(n)}, metrics, info)
    return Message(content, reply_to=sent)


def test_aggregate_train_weights_by_examples_and_rounds_integer_buffers(run_config: dict) -> None:
    # Prepare: replies w = (1, 1) from 1 example and w = (3, 3) from 3 examples
    strategy, reference = _prepare_strategy(run_config)
    sent = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (100, 101)]
    replies = [create_mock_reply(sent[0], [1.0, 1.0], 1, 1),
               create_mock_reply(sent[1], [3.0, 3.0], 2, 3)]
    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Assert: w = (1·1 + 3·3) / 4 = 2.5; n = (1·1 + 3·2) / 4 = 1.75 rounds to 2, int64 again
    assert arrays is not None and metrics is not None
    torch.testing.assert_close(arrays["w"].numpy(), np.array([2.5, 2.5], dtype=np.float32))
    assert arrays["n"].dtype == reference["n"].dtype and int(arrays["n"].numpy()) == 2
    assert metrics["train-loss"] == pytest.approx(0.5)  # the example-weighted mean
    assert (strategy.ledger.clients, strategy.ledger.rejected) == (2, 0)
    assert strategy.label_counts == {0: [1], 1: [3]}


def test_aggregate_train_drops_a_nan_reply_and_counts_it(run_config: dict) -> None:
    strategy, _ = _prepare_strategy(run_config)
    sent = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (100, 101)]
    replies = [create_mock_reply(sent[0], [1.0, 1.0], 1, 1),
               create_mock_reply(sent[1], [float("nan"), 3.0], 2, 3)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    torch.testing.assert_close(arrays["w"].numpy(), np.array([1.0, 1.0], dtype=np.float32))
    assert (strategy.ledger.clients, strategy.ledger.rejected, strategy.ledger.failed) == (1, 1, 0)


def test_aggregate_train_counts_replies_that_never_came(run_config: dict) -> None:
    strategy, _ = _prepare_strategy(run_config)
    sent = Message(RecordDict(), dst_node_id=100, message_type="train")
    arrays, _ = strategy.aggregate_train(1, [create_mock_reply(sent, [2.0, 4.0], 1, 5)])
    assert arrays is not None and strategy.ledger.failed == 1  # two sent, one answered
    torch.testing.assert_close(arrays["w"].numpy(), np.array([2.0, 4.0], dtype=np.float32))


def test_clients_without_local_test_data_skip_evaluation(small: dict) -> None:
    """Issue 18: an empty local test split answers "nothing to evaluate", not NaN metrics."""
    cfg = {**small, "data.local-test-size": 0.001}  # about 400 images each: 0 local test images
    grid, out = run(cfg)
    for r in read_rounds(out)[1:]:
        assert (r["skipped-evaluate"], r["failed-evaluate"], r["rejected"], r["clients"]) == (3, 0, 0, 3)
    evals = [m for m in grid.received if m.metadata.message_type == "evaluate"]
    assert evals and all(weights.nothing_to_evaluate(m.content) for m in evals)
    assert all(dict(m.content["metrics"]) == {"num-examples": 0} for m in evals)
    assert not weights.nothing_to_evaluate(weights.encode_eval_reply(weights.EvalUp(5, 0.1, 0.9)))
