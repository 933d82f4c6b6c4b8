"""Strategy cards: recommended values under the user's keys, checks at start-up, runs by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from fedapp.config import ConfigError, load_config
from fedapp.defaults import card_values, pyproject_defaults, resolve_layers
from fedapp.harness import InProcessGrid, run_federation
from strategies import STRATEGIES, card_for


def test_a_card_value_fills_a_key_the_user_did_not_set(run_config: dict[str, Any]) -> None:
    cfg = load_config({**run_config, "strategy": "zo-seed"})
    card = card_values("zo-seed")
    assert cfg.client.trainer == "zo" == STRATEGIES["zo-seed"].default_trainer
    assert cfg.zo.lr == card["zo.lr"] != pyproject_defaults()["zo.lr"]
    assert load_config({**run_config, "strategy": "heron-sfl"}).client.trainer == "split-zo"
    zoo = load_config({**run_config, "strategy": "fedvtc"}).model.clients
    assert zoo.split(",") == list(STRATEGIES["fedvtc"].client_models)
    assert all(m.startswith("vtc-cnn-") for m in zoo.split(","))
    # the server's exact view (submitted keys) resolves the same values as the clients' view
    assert load_config({**run_config, "strategy": "zo-seed"}, {"strategy": "zo-seed"}) == cfg


def test_a_user_value_always_wins(run_config: dict[str, Any]) -> None:
    submitted = {"strategy": "zo-seed", "zo.lr": 0.01, "zo.local-steps": 5}
    fused = {**run_config, **submitted}
    for cfg in (load_config(fused), load_config(fused, submitted)):  # clients, server
        assert (cfg.zo.lr, cfg.zo.local_steps, cfg.client.trainer) == (0.01, 5, "zo")
    _, sources = resolve_layers(fused, submitted)
    assert sources == {"client.trainer": "card:zo-seed"}


def test_a_preset_lies_over_the_card(run_config: dict[str, Any]) -> None:
    cfg = load_config({**run_config, "preset": "heron-sfl-mnist"})
    assert cfg.strategy == "heron-sfl" and cfg.client.trainer == "split-zo"
    _, sources = resolve_layers({**run_config, "preset": "heron-sfl-mnist"})
    assert sources["heron.batch-size"] == "preset:heron-sfl-mnist"


def test_a_set_default_the_clients_cannot_tell_from_unset_is_refused(
    run_config: dict[str, Any],
) -> None:
    submitted = {"strategy": "zo-seed", "zo.lr": pyproject_defaults()["zo.lr"]}
    with pytest.raises(ConfigError, match=r"zo\.lr = 0\.001 equals its pyproject default.*card zo-seed"):
        load_config({**run_config, **submitted}, submitted)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"strategy": "heron-sfl", "client.trainer": "zo"},
     "strategy 'heron-sfl' cannot use client.trainer 'zo' (allowed: split-fo, split-zo)"),
    ({"strategy": "fedvtc", "model.clients": "cnn,mlp"},
     "model.clients = 'cnn,mlp' is invalid for strategy 'fedvtc': latent size(s) cnn (128)"),
    ({"strategy": "fedavg", "model.clients": "cnn,mlp"},
     "model.clients = 'cnn,mlp' gives clients their own architectures"),
])
def test_a_bad_combination_is_refused_at_start_in_one_line(
    run_config: dict[str, Any], overrides: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    from fedapp.client_app import app as client_app
    from fedapp.server_app import main

    fused = {**run_config, **overrides}
    with pytest.raises(ConfigError) as info:
        card_for(load_config(fused))
    assert expected in str(info.value) and "\n" not in str(info.value)
    grid = InProcessGrid(client_app, fused, 2)
    with pytest.raises(ConfigError):
        main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                           run_config=fused))
    assert grid.sent == []  # refused before any client worked


def test_a_node_config_model_is_answered_in_one_line(run_config: dict[str, Any]) -> None:
    from fedapp.client_app import app as client_app
    from fedapp.config import load_config as load
    from fedapp.task.data import load_server_test
    from fedapp.task.models import build_model
    from fedapp.wire.common import pack_arrays
    from fedapp.wire.weights import TRAIN
    from flwr.app import ConfigRecord, Message, RecordDict as Content

    cfg = {**run_config, "data.dataset": "digits", "data.partition": "iid"}
    grid = InProcessGrid(client_app, cfg, 2, node_config=lambda i: {"model": "mlp"} if i else {})
    _, spec = load_server_test(load(cfg).data, 0)
    arrays = pack_arrays(build_model("fedgen-cnn", spec).state_dict())
    content = Content({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    replies = list(grid.send_and_receive(
        [Message(content, dst_node_id=n, message_type=TRAIN) for n in (100, 101)]
    ))
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert not by_node[100].has_error()
    reason = by_node[101].error.reason
    assert "node-config model = 'mlp' is invalid" in reason and "'fedgen-cnn'" in reason
    assert "load_state_dict" not in reason and "Missing key" not in reason


#: strategy -> (rounds, accuracy floor) on mnist-offline, 4 nodes; by name alone.
LEARNS = {
    "fedavg": (2, 0.6),
    "fedprox": (2, 0.6),
    "fedgen": (2, 0.6),
    "zo-seed": (3, 0.15),  # chance (round 0) is 0.094
    "heron-sfl": (2, 0.45),
    "fedvtc": (2, 0.4),  # the clients' mean on the global test set (no global model)
}


@pytest.mark.parametrize("strategy", sorted(LEARNS))
def test_a_strategy_chosen_by_name_learns(run_config: dict[str, Any], strategy: str) -> None:
    rounds, floor = LEARNS[strategy]
    overrides = {"strategy": strategy, "num-server-rounds": rounds,
                 "output-dir": run_config["output-dir"], "data.cache-dir": run_config["data.cache-dir"],
                 "run-name": strategy}
    if STRATEGIES[strategy].global_model:  # the server evaluates; skip the clients' evaluation
        overrides["server.fraction-evaluate"] = 0.0
    rows = run_federation(overrides, 4)
    assert [r["round"] for r in rows] == list(range(rounds + 1))
    assert all(r["failed-train"] == r["failed-evaluate"] == r["rejected"] == 0 for r in rows)
    assert rows[-1]["accuracy"] >= floor, [r["accuracy"] for r in rows]
    saved = json.loads((Path(run_config["output-dir"]) / strategy / "config.json").read_text())
    assert saved["from-card"] == {k: f"card:{strategy}" for k in card_values(strategy)}


def test_strategy_card_false_keeps_the_global_defaults(run_config: dict[str, Any]) -> None:
    submitted = {"strategy": "zo-seed", "strategy-card": False, "client.trainer": "zo",
                 "zo.lr": pyproject_defaults()["zo.lr"]}
    fused = {**run_config, **submitted}
    for cfg in (load_config(fused), load_config(fused, submitted)):  # clients, server
        assert (cfg.zo.lr, cfg.zo.local_steps) == (0.001, 20)
    assert resolve_layers(fused, submitted)[1] == {}
