"""FedVTC through the in-process InProcessGrid: phases, privacy of classifiers, screening, state."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from test_fedavg import run

from fedapp.config import load_config
from fedapp.results import read_rounds
from fedapp.task.models import ImageSpec
from fedapp.task.stats import FeatureStats
from fedapp.task.vtc import VTCDecoder
from fedapp.wire import fedvtc as wire
from fedapp.wire.common import (
    CLIENT_INFO,
    INFO_MODEL,
    METRICS,
    TRAIN_METRICS,
    content_bytes,
    load_state,
    save_state,
)
from strategies.fedvtc import FedVTC

torch.set_num_threads(1)  # the shared CI box: one thread is fastest under contention

ZOO = "vtc-cnn-0.5,vtc-cnn-1"


@pytest.fixture
def vtc(run_config: dict) -> dict:
    return {
        **run_config,
        "strategy": "fedvtc",
        "data.dataset": "digits",
        "data.alpha": 1.0,
        "num-server-rounds": 3,
        "client.local-epochs": 2,
        "model.clients": ZOO,
    }


def test_a_run_shares_statistics_and_decoders_but_never_a_classifier(vtc: dict) -> None:
    grid, out = run(vtc)
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        assert (r["sampled"], r["clients"], r["failed-train"], r["rejected"]) == (3, 3, 0, 0)
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["accuracy-local"] <= 1.0
        assert {"accuracy-vtc-cnn-0.5", "accuracy-vtc-cnn-1"} <= set(r)
    assert rows[-1]["accuracy"] > 0.3  # chance is 0.1
    assert "vtc-loss" not in rows[1] and "vtc-loss" in rows[2] and "finetune-loss" in rows[2]
    # every array that crossed the wire, both ways, is statistics or the decoder
    decoder_keys = set(VTCDecoder(64, ImageSpec(1, 8, 8, 10)).state_dict())
    types = set()
    for msg in grid.sent + grid.received:
        types.add(msg.metadata.message_type)
        for name, record in msg.content.array_records.items():
            allowed = decoder_keys if name == wire.VTC_DECODER else set(wire.STATS_KEYS)
            assert name in {wire.VTC_STATS, wire.VTC_GLOBAL_STATS, wire.VTC_DECODER}
            assert set(record) <= allowed, (msg.metadata.message_type, name)
    assert types == {"train.stats", "train.decoder", "train.finetune", "evaluate.vtc"}
    # bytes are what was sent and received
    assert sum(r["bytes-up"] for r in rows) == sum(
        content_bytes(m.content) for m in grid.received)
    saved = torch.load(out / "model.pt", weights_only=False)
    assert saved["strategy"]["round"] == 3
    assert saved["strategy"]["global_stats"]["mean"].shape == (10, 64)
    assert set(saved["strategy"]["decoder"]) == decoder_keys
    states = grid.contexts[100].state.config_records
    assert {wire.VTC_STATE_CLASSIFIER, wire.VTC_STATE_DECODER,
            wire.VTC_STATE_DECODER_OPT} <= set(states)


def test_statistics_only_run_with_nan_client_rejects_it_and_sends_no_decoder(vtc: dict) -> None:
    cfg = {**vtc, "num-server-rounds": 2, "fedvtc.share-decoder": False,
           "fedvtc.finetune": "final_only", "client.fault": "nan", "client.fault-partitions": "1"}
    grid, out = run(cfg)
    rows = read_rounds(out)
    for r in rows[1:]:
        assert (r["clients"], r["rejected"]) == (2, 1)
    assert all(wire.VTC_DECODER not in m.content for m in grid.sent + grid.received)
    assert rows[-1]["bytes-down"] < 40_000  # statistics only: a few KiB per message


def uniform_stats(c: int, p: int) -> FeatureStats:
    return FeatureStats(torch.zeros(c, p), torch.ones(c, p), torch.ones(c, dtype=torch.long))


def test_wrong_shaped_or_negative_statistics_are_rejected() -> None:
    reply = RecordDict({
        wire.VTC_STATS: wire.pack_stats(uniform_stats(3, 4)),
        METRICS: MetricRecord({k: 1 for k in TRAIN_METRICS}),
        CLIENT_INFO: ConfigRecord({INFO_MODEL: "m"}),
    })
    assert wire.screen_stats_reply(reply, 3, 4) is None
    assert "expected float32[3, 5]" in str(wire.screen_stats_reply(reply, 3, 5))
    negative = uniform_stats(3, 4)
    negative.var[0, 0] = -1.0
    reply[wire.VTC_STATS] = wire.pack_stats(negative)
    assert "negative" in str(wire.screen_stats_reply(reply, 3, 4))


def test_strategy_state_round_trips(vtc: dict) -> None:
    strategy = FedVTC.from_config(load_config(vtc))
    strategy.global_stats = uniform_stats(10, 64)
    strategy.server_round, strategy.models = 4, {100: "vtc-cnn-1"}
    fresh = FedVTC.from_config(load_config(vtc))
    fresh.load_state_dict(strategy.state_dict())
    assert fresh.server_round == 4 and fresh.models == {100: "vtc-cnn-1"}
    assert fresh.global_stats is not None
    torch.testing.assert_close(fresh.global_stats.var, torch.ones(10, 64))


def test_node_state_helpers_keep_model_and_optimizer_states() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = RecordDict()
    assert load_state(state, "x") is None
    save_state(state, "m", model.state_dict())
    save_state(state, "o", opt.state_dict())
    torch.testing.assert_close(load_state(state, "m")["weight"], model.weight.detach())
    again = torch.optim.Adam(model.parameters())
    again.load_state_dict(load_state(state, "o"))
    assert again.state_dict()["state"][0]["step"] == 1


def test_clients_without_local_test_data_are_skipped_not_rejected(vtc: dict) -> None:
    """Issue 18: an empty local split reports "not measured", counted as skipped-evaluate."""
    _, out = run({**vtc, "num-server-rounds": 1, "data.local-test-size": 0.001})
    row = read_rounds(out)[1]
    assert (row["skipped-evaluate"], row["rejected"], row["failed-evaluate"], row["clients"]) == (3, 0, 0, 3)
    assert 0.0 <= row["accuracy"] <= 1.0 and row["accuracy-local"] != row["accuracy-local"]  # NaN
