"""FedZGE through the in-process InProcessGrid: rounds, wire contract, failures, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedapp.client_app import app as client_app
from fedapp.config import ConfigError, load_config
from fedapp.harness import InProcessGrid
from fedapp.results import read_rounds
from fedapp.server_app import main
from fedapp.task.data import load_server_test
from fedapp.task.models import build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.wire import fedzge as wire
from fedapp.wire.common import config_message, load_state, pack_arrays
from strategies import card_for
from strategies.fedzge import FedZGE

MODELS = "0:fedgen-cnn,1:mlp,2:cnn"


@pytest.fixture
def small(run_config: dict) -> dict:
    """Digits (8x8), three clients of three architectures, a tiny FedZGE round."""
    return {
        **run_config,
        "strategy": "fedzge",
        "data.dataset": "digits",
        "data.partition": "iid",
        "num-server-rounds": 2,
        "model.name": "mlp",
        "model.clients": MODELS,
        "fedzge.synthetic-samples": 40,
        "fedzge.num-directions": 3,
        "fedzge.latent-dim": 16,
        "fedzge.generator-width": 8,
        "fedzge.local-epochs": 2,
        "fedzge.batch-size": 64,
        "fedzge.server-steps": 3,
        "fedzge.distill-steps": 3,
        "fedzge.generator-steps": 1,  # one query phase per round (the default is 5)
    }


def run(cfg: dict, num_nodes: int = 3, **grid_kwargs) -> tuple[InProcessGrid, Path]:
    grid = InProcessGrid(client_app, cfg, num_nodes, **grid_kwargs)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return grid, Path(cfg["output-dir"]) / cfg["run-name"]


def of_type(messages: list[Message], kind: str) -> list[Message]:
    return [m for m in messages if m.metadata.message_type == kind]


def test_full_rounds_with_three_architectures(small: dict) -> None:
    grid, out = run(small)
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert (r["sampled"], r["clients"], r["failed-train"], r["rejected"], r["skipped"]) == (3, 3, 0, 0, 0)
        assert r["bytes-down-per-client"] == pytest.approx(r["bytes-down"] / 3)
        assert r["bytes-up-per-client"] == pytest.approx(r["bytes-up"] / 3)
        for key in ("client-acc-before", "client-acc-after", "generator-loss",
                    "server-kd-loss", "client-kd-loss", "query-bytes-down-per-client"):
            assert key in r, key
    # every phase, to every node, every round
    for kind in ("train.local", "query.logits", "train.distill"):
        assert len(of_type(grid.sent, kind)) == 6, kind
    # each node kept its own architecture in its context state
    shapes = {
        pid: load_state(grid.contexts[100 + pid].state, wire.FEDZGE_MODEL)
        for pid in range(3)
    }
    spec = load_server_test(load_config(small).data, small["seed"])[1]
    for pid, name in enumerate(("fedgen-cnn", "mlp", "cnn")):
        expected = build_model(name, spec).state_dict()
        assert {k: v.shape for k, v in shapes[pid].items()} == {k: v.shape for k, v in expected.items()}
    saved = torch.load(out / "model.pt", weights_only=False)
    assert saved["round"] == 2 and saved["model"] == "mlp"
    state = saved["strategy"]
    assert state["round"] == 2 and "fc.weight" in state["generator"]
    assert state["generator_optimizer"]["state"] and state["server_optimizer"]["state"]
    # private models learn locally (chance is 0.1); the global model moved by distillation only
    assert rows[-1]["client-acc-before"] > 0.3
    initial = build_model("mlp", spec, seed=derive_seed(small["seed"], PURPOSE_INIT)).state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in saved["state_dict"].items())


def test_best_on_val_reports_the_round_the_validation_split_picks(small: dict) -> None:
    cfg = {**small, "num-server-rounds": 3, "data.val-size": 0.1, "fedzge.select": "best_on_val"}
    _, out = run(cfg)
    rows = read_rounds(out)
    assert all("val-accuracy" in r for r in rows)
    best = max(rows[1:], key=lambda r: (r["val-accuracy"], -r["round"]))
    selected = json.loads((out / "selected.json").read_text())
    assert selected["rule"] == "best_on_val" and selected["round"] == best["round"]
    assert selected["accuracy"] == best["accuracy"]  # the test accuracy of that round, not the max
    with pytest.raises(ConfigError, match="best_on_val' needs data.val-size > 0"):
        card_for(load_config({**small, "fedzge.select": "best_on_val"}))


def test_no_client_weights_ever_leave_a_client(small: dict) -> None:
    grid, _ = run(small)
    weight_keys = set()
    spec = load_server_test(load_config(small).data, small["seed"])[1]
    for name in ("fedgen-cnn", "mlp", "cnn"):
        weight_keys |= set(build_model(name, spec).state_dict())
    assert grid.sent and grid.received
    for msg in grid.sent + grid.received:
        assert not msg.has_error()
        for name, record in msg.content.array_records.items():
            assert name in (wire.INPUTS, wire.OUTPUTS), name
            assert set(record) <= wire.FEDZGE_WIRE_ARRAYS, (name, list(record))
            assert not set(record) & weight_keys
    ups = [set(m.content.array_records) for m in grid.received]
    assert all(a <= {wire.OUTPUTS} for a in ups)


def test_seed_transport_equals_tensor_transport_at_a_fraction_of_the_downlink(
    small: dict, tmp_path: Path
) -> None:
    outs = {}
    for mode in ("seed", "tensor"):
        cfg = {**small, "num-server-rounds": 1, "run-name": mode,
               "fedzge.direction-transport": mode}
        _, outs[mode] = run(cfg)
    seed, tensor = (torch.load(outs[m] / "model.pt", weights_only=False) for m in ("seed", "tensor"))
    for key in ("generator", "server_model"):
        for name, value in seed["strategy"][key].items():
            assert torch.equal(value, tensor["strategy"][key][name]), (key, name)
    rs, rt = read_rounds(outs["seed"])[1], read_rounds(outs["tensor"])[1]
    assert rs["accuracy"] == rt["accuracy"]
    q = small["fedzge.num-directions"]
    ratio = rt["query-bytes-down-per-client"] / rs["query-bytes-down-per-client"]
    assert 0.95 * (1 + q) < ratio <= 1 + q
    assert rs["query-bytes-up-per-client"] == rt["query-bytes-up-per-client"]


def test_missing_and_bad_query_replies_are_left_out(small: dict) -> None:
    drop = lambda m: m.metadata.dst_node_id == 102 and m.metadata.message_type == "query.logits"
    cfg = {**small, "client.fault": "nan", "client.fault-partitions": "1"}
    grid, out = run(cfg, drop=drop)
    for r in read_rounds(out)[1:]:
        assert (r["clients"], r["failed-query"], r["rejected"], r["skipped"]) == (1, 1, 1, 0)
    # only the node that answered is asked to distil
    assert {m.metadata.dst_node_id for m in of_type(grid.sent, "train.distill")} == {100}


def test_a_round_without_answers_is_skipped_and_changes_nothing(small: dict) -> None:
    cfg = {**small, "num-server-rounds": 1}
    strategy = FedZGE.from_config(load_config(cfg))
    drop = lambda m: m.metadata.message_type == "query.logits"
    grid = InProcessGrid(client_app, cfg, 3, drop=drop)
    generator = {k: v.clone() for k, v in strategy.generator.state_dict().items()}
    arrays = pack_arrays(strategy.server_model.state_dict())
    out = strategy.run_round(grid, 1, arrays)
    assert out is arrays
    for k, v in strategy.generator.state_dict().items():
        assert torch.equal(v, generator[k]), k
    ledger = strategy.ledger
    assert ledger.extra["skipped"] == 1.0 and ledger.clients == 0 and ledger.failed == 3
    assert not of_type(grid.sent, "train.distill")


def test_state_dict_round_trips(small: dict) -> None:
    cfg = load_config({**small, "num-server-rounds": 1})
    a = FedZGE.from_config(cfg)
    grid = InProcessGrid(client_app, {**small, "num-server-rounds": 1}, 3)
    a.run_round(grid, 1, pack_arrays(a.server_model.state_dict()))
    b = FedZGE.from_config(cfg)
    b.load_state_dict(a.state_dict())
    assert b.round == 1
    for k, v in a.generator.state_dict().items():
        assert torch.equal(v, b.generator.state_dict()[k])
    assert b.server_optimizer.state_dict()["state"].keys() == a.server_optimizer.state_dict()["state"].keys()


def test_handlers_keep_the_model_private_and_reject_a_distill_without_query(small: dict) -> None:
    grid = InProcessGrid(client_app, small, 1)
    ctx = grid.contexts[100]
    local = grid.create_message(config_message(1), "train.local", 100, "1")
    (reply,) = grid.send_and_receive([local])
    assert not reply.has_error() and not reply.content.array_records
    assert load_state(ctx.state, wire.FEDZGE_MODEL) is not None
    soft = wire.encode_distill(wire.DistillDown(1, torch.zeros(4, 10), 5.0, 1))
    (bad,) = grid.send_and_receive([grid.create_message(soft, "train.distill", 100, "1")])
    assert bad.has_error() and "without that round's query" in bad.error.reason


def test_node_config_model_wins_over_the_run_config_mapping(small: dict) -> None:
    grid = InProcessGrid(client_app, small, 2, node_config=lambda i: {"model": "cnn"} if i == 1 else {})
    messages = [grid.create_message(config_message(1), "train.local", n, "1") for n in (100, 101)]
    assert not any(r.has_error() for r in grid.send_and_receive(messages))
    spec = load_server_test(load_config(small).data, small["seed"])[1]
    for node, name in ((100, "fedgen-cnn"), (101, "cnn")):  # mapping says 1:mlp; node config cnn
        state = load_state(grid.contexts[node].state, wire.FEDZGE_MODEL)
        assert set(state) == set(build_model(name, spec).state_dict()), node
