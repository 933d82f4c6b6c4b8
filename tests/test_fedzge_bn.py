"""FedZGE's BatchNorm modes and evaluations (issue 15; docs/strategies/fedzge.md (Answering
mode and the official code's BatchNorm switches)): answering with batch statistics, clean vs
official-style evaluation, frozen and multi-step generators."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedapp.client_app import app as client_app
from fedapp.config import ConfigError, load_config
from fedapp.harness import InProcessGrid as FakeGrid
from fedapp.results import read_rounds
from fedapp.server_app import main
from fedapp.task import fedzge as zge
from fedapp.task.batchnorm import (
    batch_statistics,
    batchnorm_layers,
    reestimate_running_stats,
    transductive_accuracy,
)
from fedapp.task.data import Arrays, load_server_test
from fedapp.task.evaluate import evaluate
from fedapp.task.models import ImageSpec, build_model
from fedapp.wire import fedzge as wire
from fedapp.wire.common import CONFIG, pack_arrays
from strategies.fedzge import FedZGE

DIGITS = ImageSpec(1, 8, 8, 10)
CPU = torch.device("cpu")


def trained_bn_model(seed: int = 0) -> torch.nn.Module:
    """A fedgen-cnn whose running statistics are far from their initial (0, 1)."""
    model = build_model("fedgen-cnn", DIGITS, seed=seed).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(20):
            model(3 * torch.rand(64, 1, 8, 8, generator=gen) + 1)  # (64, 1, 8, 8)
    return model


def buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def assert_same_buffers(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = dict(model.named_buffers())
    assert before.keys() == after.keys() and before
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_batch_statistics_normalise_by_the_batch_and_leave_running_stats_alone() -> None:
    model = trained_bn_model().eval()
    before = buffers(model)
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = reference(x)  # plain train mode: batch statistics, buffers move
        with batch_statistics(model):
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert_same_buffers(model, before)
    assert not torch.equal(dict(reference.named_buffers())["feature_net.0.1.running_mean"],
                           before["feature_net.0.1.running_mean"])
    assert not model.training and all(not m.training for m in model.modules())
    assert all(m.track_running_stats for m in batchnorm_layers(model))


def test_batch_stat_answers_leave_running_stats_untouched_and_differ_from_eval_mode() -> None:
    model = trained_bn_model()
    model.train()  # a mode the answer must restore
    before = buffers(model)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    queries = zge.seeded_queries(x, 3, seed=5, eps=1e-3)  # (3, 20, 1, 8, 8)
    batch = zge.answer_queries(model, x, queries, "batch")  # (4, 20, 10)
    assert model.training
    assert_same_buffers(model, before)
    running = zge.answer_queries(model, x, queries, "running")
    assert batch.shape == running.shape == (4, 20, 10)
    assert (batch - running).abs().max() > 1e-2
    # each of the 1+q batches is normalised by its own statistics (official: one
    # compute_logits per batch), not by a mix of batches
    with torch.no_grad(), batch_statistics(model):
        for j, b in enumerate(torch.cat([x.unsqueeze(0), queries])):
            torch.testing.assert_close(batch[j], model(b), rtol=0, atol=0)
    # without BatchNorm the two modes agree exactly
    mlp = build_model("mlp", DIGITS, seed=0)
    torch.testing.assert_close(zge.answer_queries(mlp, x, queries, "batch"),
                               zge.answer_queries(mlp, x, queries, "running"), rtol=0, atol=0)


def test_kd_keep_leaves_running_stats_and_update_moves_them() -> None:
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    teacher = torch.randn(16, 10, generator=torch.Generator().manual_seed(4))
    kept, updated = trained_bn_model(), trained_bn_model()
    before = buffers(kept)
    zge.distill(kept, x, teacher, 5.0, 3, 0.01, bn="keep")
    zge.distill(updated, x, teacher, 5.0, 3, 0.01, bn="update")
    assert_same_buffers(kept, before)
    assert not torch.equal(dict(updated.named_buffers())["feature_net.0.1.running_mean"],
                           before["feature_net.0.1.running_mean"])
    # same batch-statistics forward, so the same weights after the steps
    for (name, a), b in zip(kept.named_parameters(), updated.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_reestimated_statistics_are_those_of_the_given_batch() -> None:
    model = trained_bn_model()
    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(6))  # (50, 1, 8, 8)
    assert reestimate_running_stats(model, [x]) == 1
    first = batchnorm_layers(model)[0]
    with torch.no_grad():
        h = model.feature_net[0][0](x)  # the first conv: (50, 6, 4, 4)
    torch.testing.assert_close(first.running_mean, h.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(first.running_var, h.var(dim=(0, 2, 3), unbiased=True))
    assert first.momentum == 0.1 and model.training
    assert reestimate_running_stats(build_model("mlp", DIGITS), [x]) == 0


def test_transductive_accuracy_depends_on_the_test_batch_and_touches_nothing() -> None:
    model = trained_bn_model().eval()
    rng = np.random.default_rng(0)
    data = Arrays(rng.integers(0, 255, (60, 1, 8, 8)).astype(np.uint8), rng.integers(0, 10, 60))
    before = buffers(model)
    a = transductive_accuracy(model, data, 60, CPU)
    assert_same_buffers(model, before)
    assert not model.training
    with torch.no_grad(), batch_statistics(model):
        x = torch.from_numpy(data.x).float() / 255
        expected = float((model(x).argmax(1) == torch.from_numpy(data.y)).float().mean())
    assert a == pytest.approx(expected)


# -- through the strategy -----------------------------------------------------------------


@pytest.fixture
def small(run_config: dict) -> dict:
    """Digits, three BN clients, a BN global model, two rounds."""
    return {
        **run_config,
        "strategy": "fedzge",
        "data.dataset": "digits",
        "data.partition": "iid",
        "num-server-rounds": 2,
        "model.name": "fedgen-cnn",
        "model.clients": "",
        "fedzge.synthetic-samples": 32,
        "fedzge.num-directions": 2,
        "fedzge.latent-dim": 8,
        "fedzge.generator-width": 8,
        "fedzge.local-epochs": 1,
        "fedzge.batch-size": 64,
        "fedzge.server-steps": 3,
        "fedzge.distill-steps": 2,
        "fedzge.generator-steps": 1,
    }


def run(cfg: dict, num_nodes: int = 3) -> tuple[FakeGrid, Path]:
    grid = FakeGrid(client_app, cfg, num_nodes)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return grid, Path(cfg["output-dir"]) / cfg["run-name"]


def test_clean_headline_never_sees_test_batch_statistics(small: dict) -> None:
    outs = {}
    for official in (True, False):
        cfg = {**small, "run-name": f"official-{official}", "fedzge.official-eval": official}
        _, outs[official] = run(cfg)
    with_diag, without = read_rounds(outs[True]), read_rounds(outs[False])
    # the diagnostic is logged, labelled, and has no effect on training or the headline
    assert all("accuracy-official-style" in r for r in with_diag[1:])
    assert not any("accuracy-official-style" in r for r in without)
    assert [r["accuracy"] for r in with_diag] == [r["accuracy"] for r in without]
    a, b = (torch.load(outs[o] / "model.pt", weights_only=False) for o in (True, False))
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    # the headline is eval mode on the running statistics the server's KD left
    cfg = load_config(small)
    test, spec = load_server_test(cfg.data, cfg.seed)
    model = build_model("fedgen-cnn", spec)
    model.load_state_dict(a["state_dict"])
    assert with_diag[-1]["accuracy"] == evaluate(model, test, 500, CPU).accuracy
    last = with_diag[-1]
    assert last["accuracy-official-style"] >= last["accuracy-batch-stats"]
    assert last["accuracy-batch-stats"] == pytest.approx(
        transductive_accuracy(model, test, 64, CPU), abs=1e-4)  # rows keep 4 digits


def test_frozen_generator_is_accepted_and_never_changes(small: dict) -> None:
    cfg = {**small, "fedzge.generator-lr": 0.0}
    strategy = FedZGE.from_config(load_config(cfg))
    before = {k: v.clone() for k, v in strategy.generator.state_dict().items()}
    grid = FakeGrid(client_app, cfg, 3)
    initial = pack_arrays(strategy.server_model.state_dict())
    arrays = initial
    for rnd in (1, 2):
        arrays = strategy.run_round(grid, rnd, arrays)
    for k, v in strategy.generator.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the rest of the round still ran: the global model learnt by KD
    moved, start = arrays.to_torch_state_dict(), initial.to_torch_state_dict()
    assert not torch.equal(moved["head.weight"], start["head.weight"])
    with pytest.raises(ConfigError, match="generator-lr"):
        load_config({**small, "fedzge.generator-lr": -1.0})


def test_generator_steps_query_each_step_and_a_persistent_adam_accumulates(small: dict) -> None:
    cfg = {**small, "fedzge.generator-steps": 3, "fedzge.generator-optimizer": "persistent",
           "num-server-rounds": 1}
    strategy = FedZGE.from_config(load_config(cfg))
    grid = FakeGrid(client_app, cfg, 3)
    strategy.run_round(grid, 1, pack_arrays(strategy.server_model.state_dict()))
    queries = [m for m in grid.sent if m.metadata.message_type == "query.logits"]
    assert len(queries) == 3 * 3
    seeds = {int(m.content.config_records[CONFIG][wire.QUERY_SEED]) for m in queries}
    assert len(seeds) == 3  # fresh directions every step
    state = strategy.generator_optimizer.state_dict()["state"]
    assert {int(s["step"]) for s in state.values()} == {3}
    ledger = strategy.ledger
    one = FedZGE.from_config(load_config({**cfg, "fedzge.generator-steps": 1}))
    one.run_round(FakeGrid(client_app, cfg, 3), 1,
                  pack_arrays(one.server_model.state_dict()))
    down = one.ledger.extra["query-bytes-down-per-client"]
    assert ledger.extra["query-bytes-down-per-client"] == pytest.approx(3 * down, rel=0.01)
