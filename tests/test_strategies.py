"""Whole server runs through the in-process FakeGrid: screening, accounting, results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fakes import FakeGrid
from flwr.app import Context, RecordDict

from fedapp import records
from fedapp.client_app import app as client_app
from fedapp.config import ACCEPTS, load_config
from fedapp.results import NothingAggregated, read_rounds
from fedapp.server_app import main
from strategies import STRATEGIES, build_strategy


def run(cfg: dict, num_nodes: int = 3, **grid_kwargs) -> tuple[FakeGrid, Path]:
    grid = FakeGrid(client_app, cfg, num_nodes, **grid_kwargs)
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
    for name in STRATEGIES:
        trainer = min(ACCEPTS[name])  # a trainer this strategy can drive
        cfg = load_config({**run_config, "strategy": name, "client.trainer": trainer})
        assert build_strategy(cfg) is not None


def test_nan_reply_is_rejected_and_the_run_completes(small: dict) -> None:
    grid, out = run({**small, "client.fault": "nan", "client.fault-partitions": "1"})
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert (r["clients"], r["rejected"], r["failed"], r["sampled"]) == (2, 1, 0, 3)
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
    sent = sum(records.content_bytes(m.content) for m in grid.sent)
    received = sum(records.content_bytes(m.content) for m in grid.received)
    assert sum(r["bytes-down"] for r in rows) == sent
    assert sum(r["bytes-up"] for r in rows) == received
    model_bytes = records.content_bytes(RecordDict({"arrays": grid.sent[0].content["arrays"]}))
    assert rows[1]["bytes-down"] >= 2 * 3 * model_bytes  # train + evaluate to 3 nodes


def test_failed_and_missing_replies_are_counted(small: dict) -> None:
    cfg = {**small, "client.fault": "raise", "client.fault-partitions": "0"}
    drop_node_2 = lambda m: m.metadata.dst_node_id == 102 and m.metadata.message_type == "train"
    _, out = run(cfg, drop=drop_node_2)
    for r in read_rounds(out)[1:]:
        assert (r["clients"], r["failed"], r["rejected"]) == (1, 2, 0)


def test_all_rejected_keeps_the_previous_model(small: dict) -> None:
    with pytest.raises(NothingAggregated):  # the run ends failed, its results kept
        run({**small, "client.fault": "shape", "client.fault-partitions": "0,1,2"})
    rows = read_rounds(Path(small["output-dir"]) / small["run-name"])
    assert all(r["rejected"] == 3 and r["clients"] == 0 for r in rows[1:])
    assert rows[2]["accuracy"] == rows[1]["accuracy"] == rows[0]["accuracy"]


def test_fedprox_sends_mu_and_clients_use_it(small: dict) -> None:
    grid, out = run({**small, "strategy": "fedprox", "fedprox.mu": 0.5})
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert train and all(m.content["config"][records.PROXIMAL_MU] == 0.5 for m in train)
    assert read_rounds(out)[-1]["accuracy"] > 0.3
