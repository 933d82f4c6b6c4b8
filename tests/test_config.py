"""Config schema: pyproject and presets validate; bad values fail in one readable line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, pyproject_run_config

from clients import TRAINERS
from fedapp.config import (
    ConfigError,
    StrategyName,
    TrainerName,
    literal_values,
    load_config,
    load_node_config,
    unflatten,
)
from fedapp.task import seeding
from strategies import STRATEGIES, card_for

PRESETS = sorted((ROOT / "fedapp" / "presets").glob("*.toml"))


def test_pyproject_defaults_validate() -> None:
    cfg = load_config(pyproject_run_config())
    assert cfg.strategy == "fedavg"
    assert cfg.data.dataset == "mnist-offline"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_validate(preset: Path) -> None:
    with preset.open("rb") as f:
        overrides = tomllib.load(f)
    defaults = pyproject_run_config()
    assert set(overrides) <= set(defaults), "presets may only set keys that pyproject defines"
    card_for(load_config({**defaults, **overrides}))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"data.alpha": -1.0}, "data.alpha = -1.0 is invalid: Input should be greater than 0"),
        ({"strategy": "fedsgd"}, "strategy = 'fedsgd' is invalid: Input should be 'fedavg'"),
        ({"client.lr": "fast"}, "client.lr = 'fast' is invalid: Input should be a valid number"),
        ({"num-server-rounds": 0}, "num-server-rounds = 0 is invalid"),
        ({"num-server-rounds": 2.5}, "num-server-rounds = 2.5 is invalid: Input should be a valid integer"),
        ({"data.partition": "shards"}, "data.partition = 'shards' is invalid"),
        ({"client.fault-partitions": "1,x"}, "comma-separated non-negative integers"),
        ({"run-name": "a/b"}, "run-name = 'a/b' is invalid"),
    ],
)
def test_bad_value_names_key_value_and_allowed(override: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**pyproject_run_config(), **override})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("invalid run config: ")


def test_unknown_key_lists_allowed_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'data\.alpah' \(allowed here: alpha, "):
        load_config({**pyproject_run_config(), "data.alpah": 0.3})


def test_missing_key_is_named() -> None:
    cfg = pyproject_run_config()
    del cfg["client.lr"]
    with pytest.raises(ConfigError, match=r"missing key 'client\.lr'"):
        load_config(cfg)


def test_cross_field_rules() -> None:
    base = pyproject_run_config()
    with pytest.raises(ConfigError, match="needs data.local-test-size > 0"):
        load_config({**base, "data.local-test-size": 0.0})
    with pytest.raises(ConfigError, match="needs data.path"):
        load_config({**base, "data.dataset": "local"})
    with pytest.raises(ConfigError, match="model.clients = 'cnn,mlp' .* strategy 'fedavg'"):
        card_for(load_config({**base, "model.clients": "cnn,mlp"}))
    with pytest.raises(ConfigError, match="model.clients.*unknown model"):
        load_config({**base, "strategy": "fedzge", "model.clients": "0:vgg"})


def test_seed_purposes_are_distinct() -> None:
    purposes = {k: v for k, v in vars(seeding).items() if k.startswith("PURPOSE_")}
    assert len(set(purposes.values())) == len(purposes), purposes


def test_unflatten_dotted_keys() -> None:
    assert unflatten({"a": 1, "b.c": 2, "b.d.e": 3}) == {"a": 1, "b": {"c": 2, "d": {"e": 3}}}
    with pytest.raises(ConfigError, match="clashes"):
        unflatten({"b": 1, "b.c": 2})


def test_node_config() -> None:
    node = load_node_config({"partition-id": 2, "num-partitions": 3, "trainer": "fo"})
    assert (node.partition_id, node.num_partitions, node.trainer) == (2, 3, "fo")
    with pytest.raises(ConfigError, match="partition-id 3 must be < num-partitions 3"):
        load_node_config({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigError, match="unknown key 'data-dir'"):
        load_node_config({"partition-id": 0, "num-partitions": 1, "data-dir": "/x"})


def test_registries_match_schema() -> None:
    assert set(STRATEGIES) == set(literal_values(StrategyName))
    assert set(TRAINERS) == set(literal_values(TrainerName))
    for name, card in STRATEGIES.items():
        assert card.name == name and card.default_trainer in card.trainers
        assert card.trainers <= set(TRAINERS) | {"mixed"}, name
        assert bool(card.client_models) == card.heterogeneous, name
