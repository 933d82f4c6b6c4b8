"""Client handlers called directly with crafted messages, and the fault-injection mod."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients.handlers import fedzge, split, weights, zo_seed
from fedapp.client_app import app as client_app
from fedapp.config import load_config
from fedapp.task.data import load_server_test
from fedapp.task.models import build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.task.split import build_split
from fedapp.wire import split as split_wire
from fedapp.wire import weights as weights_wire
from fedapp.wire import zo_seed as zo_wire
from fedapp.wire.common import ARRAYS, CONFIG, SERVER_ROUND, TRAIN_METRICS, config_message, pack_arrays


@pytest.fixture
def digits(run_config: dict[str, Any]) -> dict[str, Any]:
    return {**run_config, "data.dataset": "digits", "data.partition": "iid",
            "client.local-steps": 3}


def context(cfg: dict[str, Any], partition: int = 0, **node: Any) -> Context:
    return Context(run_id=1, node_id=100 + partition, state=RecordDict(), run_config=cfg,
                   node_config={"partition-id": partition, "num-partitions": 2, **node})


def train_message(cfg: dict[str, Any], message_type: str = "train") -> Message:
    """What Flower's FedAvg sends: the global model and ``config`` {``server-round``}."""
    app_cfg = load_config(cfg)
    _, spec = load_server_test(app_cfg.data, app_cfg.seed)
    model = build_model(app_cfg.model.name, spec, seed=0)
    content = RecordDict({ARRAYS: pack_arrays(model.state_dict()),
                          CONFIG: ConfigRecord({SERVER_ROUND: 1})})
    return Message(content, dst_node_id=100, message_type=message_type)


def test_weights_train_replies_the_model_metrics_and_client_info(digits: dict) -> None:
    msg = train_message(digits)
    reply = weights.train(msg, context(digits))
    reference = msg.content.array_records[ARRAYS]
    assert weights_wire.screen_train_reply(reply.content, reference) is None
    sent, got = reference.to_torch_state_dict(), reply.content.array_records[ARRAYS]
    assert any(not torch.equal(v, got.to_torch_state_dict()[k]) for k, v in sent.items())
    assert set(reply.content.metric_records["metrics"]) == set(TRAIN_METRICS)
    assert reply.content.metric_records["metrics"]["forward-passes"] == 3  # client.local-steps


def test_weights_evaluate_replies_metrics_only(digits: dict) -> None:
    reply = weights.evaluate_local(train_message(digits, "evaluate"), context(digits))
    assert weights_wire.screen_eval_reply(reply.content) is None
    assert not reply.content.array_records


@pytest.mark.parametrize(
    ("handler", "trainer", "reason"),
    [
        (weights.train, "split-zo", "trainer 'split-zo' does not train a whole model"),
        (split.train, "fo", "trainer 'fo' does not train split models"),
        (fedzge.train_local, "zo", "fedzge clients train with trainer fo"),
    ],
)
def test_a_handler_refuses_a_trainer_its_protocol_cannot_drive(
    digits: dict, handler: Any, trainer: str, reason: str
) -> None:
    if handler is fedzge.train_local:
        msg = Message(config_message(1), dst_node_id=100, message_type="train.local")
    elif handler is split.train:
        app_cfg = load_config(digits)
        parts = build_split(app_cfg.model.name, load_server_test(app_cfg.data, app_cfg.seed)[1])
        down = split_wire.SplitDown(1, 2, 1, 1e-3, 1e-3, parts.front.state_dict(),
                                    parts.aux.state_dict())
        msg = Message(split_wire.encode_down(down), dst_node_id=100, message_type="train.split")
    else:
        msg = train_message(digits)
    with pytest.raises(ValueError, match=reason):
        handler(msg, context(digits, trainer=trainer))


def test_zo_seed_train_replies_scalars_only(digits: dict) -> None:
    cfg = {**digits, "strategy": "zo-seed", "client.trainer": "zo", "zo.local-steps": 3,
           "zo.num-directions": 2}
    app_cfg = load_config(cfg)
    down = zo_wire.ZODownlink(server_round=1, target_round=1, seed_base=7, lr=1e-3, history=[],
                              buffers=None, model=None)
    msg = Message(zo_wire.encode_down(down, explicit_seeds=False), dst_node_id=100,
                  message_type=zo_wire.TRAIN_SEEDS)
    ctx = context(cfg)
    reply = zo_seed.train(msg, ctx)
    up = zo_wire.decode_up(reply.content)
    assert up.scalars.shape == (6,) and up.seeds is None  # H·P scalars, seeds derivable
    assert set(reply.content.array_records) == {zo_wire.ZO_STEPS, zo_wire.ZO_BUFFERS}
    replica = zo_seed.held_replica(ctx)
    assert replica is not None and replica[1] == 1  # θ^1 stays; the local steps never touch it
    _, spec = load_server_test(app_cfg.data, app_cfg.seed)
    init = build_model(app_cfg.model.name, spec, seed=derive_seed(app_cfg.seed, PURPOSE_INIT))
    assert all(torch.equal(replica[0][k], v) for k, v in init.state_dict().items())


@pytest.mark.parametrize("fault", ["nan", "shape"])
def test_the_fault_mod_corrupts_only_the_faulty_partitions_train_reply(
    digits: dict, fault: str
) -> None:
    cfg = {**digits, "client.fault": fault, "client.fault-partitions": "1"}
    msg = train_message(cfg)
    reference = msg.content.array_records[ARRAYS]
    clean = client_app(msg, context(cfg, partition=0))
    bad = client_app(train_message(cfg), context(cfg, partition=1))
    assert weights_wire.screen_train_reply(clean.content, reference) is None
    reason = weights_wire.screen_train_reply(bad.content, reference)
    assert reason is not None and ("NaN/Inf" in reason if fault == "nan" else "expected" in reason)
    evaluated = client_app(train_message(cfg, "evaluate"), context(cfg, partition=1))
    assert np.isfinite(evaluated.content.metric_records["metrics"]["eval-loss"])


def test_the_fault_mod_raises_for_raise(digits: dict) -> None:
    cfg = {**digits, "client.fault": "raise", "client.fault-partitions": "0"}
    with pytest.raises(RuntimeError, match="injected client failure"):
        client_app(train_message(cfg), context(cfg, partition=0))
