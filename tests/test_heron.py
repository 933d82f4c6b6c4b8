"""HERON-SFL server through the in-process InProcessGrid: wire contract, update order, checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Array, Context, RecordDict

from fedapp.client_app import app as client_app
from fedapp.config import load_config
from fedapp.harness import InProcessGrid
from fedapp.results import read_rounds
from fedapp.server_app import main
from fedapp.wire import split as wire
from fedapp.wire.common import (
    CONFIG,
    SERVER_ROUND,
    SMOOTHING,
    ClientInfo,
    TrainMetrics,
)
from strategies.heron import HeronSFL


@pytest.fixture
def heron(run_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **run_config,
        "strategy": "heron-sfl",
        "client.trainer": "split-zo",
        "data.dataset": "digits",
        "data.partition": "iid",
        "num-server-rounds": 2,
        "heron.batch-size": 32,
        "heron.client-lr": 1e-3,
        "heron.server-lr": 3e-3,
    }


def run(cfg: dict[str, Any], num_nodes: int = 3) -> tuple[InProcessGrid, Path]:
    grid = InProcessGrid(client_app, cfg, num_nodes)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return grid, Path(cfg["output-dir"]) / cfg["run-name"]


def test_round_trains_back_end_averages_front_and_records_costs(heron: dict[str, Any]) -> None:
    grid, out = run(heron)
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert (r["sampled"], r["clients"], r["failed-train"], r["rejected"]) == (3, 3, 0, 0)
        assert 0 <= r["aux-acc"] <= 1 and r["server-steps"] == 3 * r["client-uploads"]
        assert r["client-forward-per-step"] == 2 and r["client-backward-per-step"] == 0
        assert r["client-step-flops"] > 0 and r["client-step-peak-mem-mb"] > 0
        assert r["client-bytes-up-acts"] > 0 and r["client-bytes-up-weights"] > 0
    assert rows[-1]["accuracy"] > 0.3  # front + trained back-end, well above chance (0.1)
    saved = torch.load(out / "model.pt", weights_only=False)
    assert set(saved["strategy"]) == {"aux", "back", "server-optimizer"}
    assert saved["strategy"]["server-optimizer"]["state"]  # Adam moments persist


def test_no_gradients_or_back_end_ever_go_to_clients(heron: dict[str, Any]) -> None:
    grid, _ = run({**heron, "num-server-rounds": 1, "client.trainer": "split-fo"})
    cfg = load_config(heron)
    strategy = HeronSFL(cfg)
    front_keys, aux_keys = set(strategy.parts.front.state_dict()), set(strategy.parts.aux.state_dict())
    sent = [m for m in grid.sent if m.metadata.message_type == wire.TRAIN_SPLIT]
    assert len(sent) == 3
    for msg in sent:
        arrays = msg.content.array_records
        assert set(arrays) == {wire.FRONT, wire.AUX}
        assert set(arrays[wire.FRONT]) == front_keys and set(arrays[wire.AUX]) == aux_keys
        assert set(msg.content.config_records[CONFIG]) == {
            SERVER_ROUND, wire.LOCAL_STEPS, wire.UPLOAD_EVERY, SMOOTHING,
            wire.LR,
        }
    assert not any(m.metadata.message_type != wire.TRAIN_SPLIT for m in grid.sent)


ONES = wire.SplitMetrics(TrainMetrics(1, 1, 1, 1, 1, 1), 1, 1, 1, 1)


def fake_reply(pid: int, cut_shape: tuple[int, ...], strategy: HeronSFL) -> RecordDict:
    gen = torch.Generator().manual_seed(pid)
    acts = torch.randn(20, *cut_shape, generator=gen)  # two uploads of 10
    labels = torch.randint(0, 10, (20,), generator=gen)
    return wire.encode_up(
        strategy.parts.front.state_dict(), strategy.parts.aux.state_dict(), acts, labels,
        [10, 10], ONES, ClientInfo(pid, "split-zo", "fedgen-cnn", [2] * 10),
    )


def test_server_updates_are_sequential_in_partition_order(heron: dict[str, Any]) -> None:
    # Prepare: three replies with different smashed data, arriving in different orders
    cfg = load_config(heron)
    probe = HeronSFL(cfg)
    replies = {pid: fake_reply(pid, probe.parts.cut_shape, probe) for pid in (0, 1, 2)}
    results = []
    for arrival in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        strategy = HeronSFL(cfg)
        # Execute: the phase sorts by partition id before stepping θ_s
        strategy._train_back_end(strategy._in_client_order([wire.decode_up(replies[p]) for p in arrival]))
        assert strategy.server_order == [0, 1, 2]
        assert strategy.ledger.extra["server-steps"] == 6
        results.append(strategy.parts.back.state_dict())
    # Assert: the same θ_s bit for bit, whatever the arrival order
    for other in results[1:]:
        assert all(torch.equal(results[0][k], other[k]) for k in results[0])
    # ... and the order matters: stepping 2, 1, 0 gives another θ_s
    strategy = HeronSFL(cfg)
    strategy._train_back_end([wire.decode_up(replies[p]) for p in (2, 1, 0)])
    reversed_state = strategy.parts.back.state_dict()
    assert not all(torch.equal(results[0][k], reversed_state[k]) for k in reversed_state)


def test_checkpoint_state_round_trips(heron: dict[str, Any]) -> None:
    cfg = load_config(heron)
    a = HeronSFL(cfg)
    reply = fake_reply(0, a.parts.cut_shape, a)
    a._train_back_end(a._in_client_order([wire.decode_up(reply)]))
    b = HeronSFL(cfg)
    b.load_state_dict(a.state_dict())
    for key, value in a.parts.back.state_dict().items():
        assert torch.equal(value, b.parts.back.state_dict()[key])
    assert b.server_opt.state_dict()["state"].keys() == a.server_opt.state_dict()["state"].keys()


def test_nan_front_is_rejected_and_the_round_goes_on(heron: dict[str, Any]) -> None:
    _, out = run({**heron, "num-server-rounds": 1, "client.trainer": "split-fo",
                  "client.fault": "nan", "client.fault-partitions": "1"})
    row = read_rounds(out)[1]
    assert (row["clients"], row["rejected"]) == (2, 1)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda a, y: (a[:, :1], y), "acts are float32"),
        (lambda a, y: (a.fill_(float("nan")), y), "NaN/Inf"),
        (lambda a, y: (a, y + 10), "labels outside"),
        (lambda a, y: (a.double(), y), "acts are float64"),
    ],
)
def test_bad_activations_are_screened(heron: dict[str, Any], mutate: Any, reason: str) -> None:
    cfg = load_config(heron)
    s = HeronSFL(cfg)
    acts, labels = mutate(torch.zeros(4, *s.parts.cut_shape), torch.zeros(4, dtype=torch.int64))
    content = wire.encode_up(
        s.parts.front.state_dict(), s.parts.aux.state_dict(), acts, labels, [4], ONES,
        ClientInfo(0, "split-zo", "fedgen-cnn", [1] * 10),
    )
    if acts.dtype == torch.float64:  # encode_up casts; forge the wire dtype directly
        content.array_records[wire.ACTIVATIONS][wire.ACTS] = Array(acts.numpy())
    sent = wire.encode_down(wire.SplitDown(
        1, 0, 1, 1e-3, 1e-3, s.parts.front.state_dict(), s.parts.aux.state_dict()
    ))
    found = wire.screen_up(content, sent, s.parts.cut_shape, s.spec.num_classes)
    assert found is not None and reason in found
