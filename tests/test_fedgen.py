"""FedGen: generator maths, the client regulariser, and whole rounds through the fake Grid."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from clients.base import FitPlan
from clients.fedgen import draw_counts, fedgen_loss
from clients.fo import FirstOrderTrainer
from fedapp.client_app import app as client_app
from fedapp.config import load_config
from fedapp.harness import InProcessGrid
from fedapp.results import read_rounds
from fedapp.server_app import main
from fedapp.task.data import Arrays
from fedapp.task.fedgen import (
    GeneratorPlan,
    LatentGenerator,
    RegularizerRound,
    diversity_loss,
    label_weights,
    regularization_weight,
    sample_labels,
    sample_noise,
    teacher_loss,
    train_generator,
)
from fedapp.task.models import MODELS, ImageSpec, build_model
from fedapp.task.seeding import torch_generator
from fedapp.wire import fedgen as fedgen_wire
from fedapp.wire.common import CLIENT_INFO, INFO_TRAINER, decode_client_info
from strategies import build_strategy

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the test machine is shared, and two threads contend badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_label_weights_on_toy_counts() -> None:
    # Prepare: client 0 holds 3 of label 0 and 1 of label 2; client 1 holds 1 of label 0
    counts = torch.tensor([[3, 0, 1], [1, 0, 0]])
    # Execute
    weights, qualified = label_weights(counts)
    # Assert: alpha_k^y = c_k[y] / sum_j c_j[y]; nobody holds label 1
    torch.testing.assert_close(weights, torch.tensor([[0.75, 0.25], [0.0, 0.0], [1.0, 0.0]]))
    assert qualified == [0, 2]


def test_draw_counts_qualify_labels_drawn_more_than_once() -> None:
    # official draw counts start at 1: label 1 (count 1) was never drawn
    _, qualified = label_weights(torch.tensor([[4, 1, 2], [2, 1, 1]]), min_count=1)
    assert qualified == [0, 2]


def test_diversity_loss_on_hand_made_inputs() -> None:
    eps = torch.tensor([[0.0], [1.0]])  # D_eps = [[0, 1], [1, 0]]
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # D_z = mean |dz| = [[0, 1], [1, 0]]
    assert float(diversity_loss(eps, z)) == pytest.approx(math.exp(-0.5))  # mean of (0,1,1,0)
    assert float(diversity_loss(eps, torch.zeros(2, 2))) == 1.0  # collapsed latents


def test_teacher_loss_weights_each_head_by_its_label_share() -> None:
    # two heads, one latent sample of label 0 with weights (0.75, 0.25)
    heads = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    z, y = torch.randn(1, 2), torch.tensor([0])
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    expected = 0.75 * F.cross_entropy(heads[0](z), y) + 0.25 * F.cross_entropy(heads[1](z), y)
    torch.testing.assert_close(teacher_loss(heads, weights, z, y), expected)


def test_generator_lowers_the_teacher_loss_of_fixed_heads() -> None:
    torch.manual_seed(0)
    heads = [torch.nn.Linear(4, 3).eval().requires_grad_(False) for _ in range(2)]
    weights, qualified = label_weights(torch.tensor([[5, 1, 0], [1, 5, 3]]))
    generator = LatentGenerator(3, noise_dim=4, hidden_dim=32, latent_dim=4)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)

    def loss_now() -> float:
        generator.eval()
        gen = torch_generator(123)
        y = sample_labels(qualified, 256, gen, CPU)
        with torch.no_grad():
            z = generator(sample_noise(256, 4, "gaussian", gen, CPU), y)
            return float(teacher_loss(heads, weights, z, y))

    before = loss_now()
    plan = GeneratorPlan(steps=100, batch_size=32, noise="gaussian", teacher_weight=1.0,
                         diversity_weight=1.0, student_weight=0.0)
    losses = train_generator(generator, optimizer, heads, weights, qualified, plan, torch_generator(0))
    after = loss_now()
    assert after < 0.25 * before, (before, after)
    assert losses.teacher > 0 and 0 < losses.diversity <= 1 and losses.student == 0


def test_generator_matches_the_official_parameter_count() -> None:
    g = LatentGenerator(10, noise_dim=32, hidden_dim=256, latent_dim=32)
    assert sum(p.numel() for p in g.parameters()) == 19_744
    assert sum(b.numel() for n, b in g.named_buffers() if "running" in n) == 512


def test_regularisation_weights_decay_to_a_floor() -> None:
    assert regularization_weight(10.0, 0.98, 1e-4, 0) == 10.0
    assert regularization_weight(10.0, 0.98, 1e-4, 2) == pytest.approx(10.0 * 0.98**2)
    assert regularization_weight(10.0, 0.5, 1e-4, 100) == 1e-4


def _regularizer(alpha: float, beta: float, model_name: str = "mlp") -> tuple:
    spec = ImageSpec(1, 8, 8, 3)
    model = build_model(model_name, spec, seed=0)
    cfg = load_config(_defaults()).fedgen
    generator = LatentGenerator(3, cfg.noise_dim, cfg.hidden_dim, model.latent_dim)
    rnd = RegularizerRound(generator.state_dict(), alpha, beta, (0, 2))
    reg = fedgen_loss(rnd, cfg, 3, model.latent_dim, batch_size=4, seed=7)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    return model, reg, x, y


def _defaults() -> dict:
    from conftest import pyproject_run_config

    return pyproject_run_config()


def test_client_loss_is_plain_cross_entropy_without_regularisation() -> None:
    model, reg, x, y = _regularizer(alpha=0.0, beta=0.0)
    torch.testing.assert_close(reg(model, x, y), F.cross_entropy(model(x), y))


def test_client_loss_includes_both_terms_with_a_generator() -> None:
    model, reg, x, y = _regularizer(alpha=2.0, beta=3.0)
    z_y, y_hat, z_hat = reg.latents(x, y)
    assert set(y_hat.tolist()) <= {0, 2} and z_hat.shape == (32, model.latent_dim)
    logits = model(x)
    target = F.softmax(model.head(z_y), dim=1)
    kl = (target * (target.log() - F.log_softmax(logits, dim=1))).sum(dim=1).mean()
    generated = F.cross_entropy(model.head(z_hat), y_hat)
    expected = F.cross_entropy(logits, y) + (32 / 4) * 2.0 * generated + 3.0 * kl
    torch.testing.assert_close(reg(model, x, y), expected)
    assert kl > 0 and generated > 0


def test_client_draws_are_fixed_per_minibatch() -> None:
    # zeroth-order trainers evaluate one minibatch several times: the objective must not move
    model, reg, x, y = _regularizer(alpha=1.0, beta=1.0)
    first = reg(model, x, y)
    torch.testing.assert_close(reg(model, x, y), first)
    assert not torch.equal(reg(model, x.clone(), y), first)  # a new minibatch draws anew


def test_generated_ce_reaches_only_the_head() -> None:
    model, reg, x, y = _regularizer(alpha=1.0, beta=0.0)
    _, y_hat, z_hat = reg.latents(x, y)
    F.cross_entropy(model.head(z_hat), y_hat).backward()
    assert all(p.grad is None for p in model.feature_net.parameters())
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in reg.generator.parameters())


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"resnet34", "resnet50"}))
def test_regulariser_works_with_every_split_model(name: str) -> None:
    model, reg, x, y = _regularizer(alpha=1.0, beta=1.0, model_name=name)
    loss = reg(model, x, y)
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad is not None


def test_first_order_trainer_minimises_the_regularised_objective() -> None:
    model, reg, _, _ = _regularizer(alpha=1.0, beta=1.0)
    rng = np.random.default_rng(0)
    data = Arrays(rng.integers(0, 255, (64, 1, 8, 8)).astype(np.uint8), rng.integers(0, 3, 64))
    plan = FitPlan(2, 0.05, 1, 10, 4, "sgd", 0.0, 0.0, 0.0, 0)
    stats = FirstOrderTrainer().fit(model, data, plan, CPU, loss_fn=reg)
    assert stats.forward_passes == 10 and math.isfinite(stats.train_loss)


def test_draw_counts_replay_the_plans_minibatches() -> None:
    y = np.repeat(np.arange(3), [50, 10, 4])  # 64 examples
    data = Arrays(np.zeros((64, 1, 2, 2), np.uint8), y.astype(np.int64))
    plan = FitPlan(1, 0.1, 1, 5, 8, "sgd", 0.0, 0.0, 0.0, data_seed=3)
    counts = draw_counts(data, plan, 4)
    assert sum(counts) == 4 + 5 * 8 and counts[3] == 1  # starts at 1; label 3 never drawn
    assert counts == draw_counts(data, plan, 4)  # deterministic for the plan


# ---- whole rounds through the fake Grid ---------------------------------------------


@pytest.fixture
def fedgen_cfg(run_config: dict) -> dict:
    return {
        **run_config,
        "strategy": "fedgen",
        "data.dataset": "digits",
        "data.partition": "iid",
        "num-server-rounds": 2,
        "client.lr": 0.05,
        "client.momentum": 0.0,
        "client.local-steps": 20,
        "fedgen.generator-steps": 5,
    }


def run(cfg: dict, num_nodes: int = 3) -> tuple[InProcessGrid, Path]:
    grid = InProcessGrid(client_app, cfg, num_nodes)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return grid, Path(cfg["output-dir"]) / cfg["run-name"]


def test_fedgen_rounds_send_the_generator_from_round_two(fedgen_cfg: dict) -> None:
    grid, out = run(fedgen_cfg)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    first, second = train[:3], train[3:]
    assert all(fedgen_wire.GENERATOR not in m.content.array_records for m in first)
    assert all(fedgen_wire.FEDGEN_ALPHA not in m.content["config"] for m in first)
    scale = 0.01 / 0.05  # decision G8: official step 0.01 over this client's step (lr 0.05, m 0)
    for m in second:
        config = m.content["config"]
        assert config[fedgen_wire.FEDGEN_ALPHA] == pytest.approx(10.0 * 0.98 * scale)
        assert config[fedgen_wire.FEDGEN_BETA] == pytest.approx(10.0 * 0.98 * scale)
        assert list(config[fedgen_wire.FEDGEN_LABELS]) == list(range(10))  # iid: every label seen
        assert fedgen_wire.GENERATOR in m.content.array_records
    rows = read_rounds(out)
    assert all(r["rejected"] == 0 and r["clients"] == 3 for r in rows[1:])
    assert rows[2]["bytes-down"] > rows[1]["bytes-down"]  # the generator travels from round 2
    assert rows[-1]["accuracy"] > 0.3


def test_official_weight_scale_sends_the_official_weights(fedgen_cfg: dict) -> None:
    grid, _ = run({**fedgen_cfg, "fedgen.weight-scale": "official"})
    second = [m for m in grid.sent if m.metadata.message_type == "train"][3:]
    assert second and all(
        m.content["config"][fedgen_wire.FEDGEN_ALPHA] == pytest.approx(10.0 * 0.98) for m in second
    )


def test_step_scale_is_one_at_the_official_protocol_and_smaller_above_it() -> None:
    from fedapp.task.fedgen import step_scale

    assert step_scale("sgd", 0.01, 0.0) == 1.0  # preset fedgen-mnist: unchanged
    assert step_scale("sgd", 0.05, 0.9) == pytest.approx(0.02)  # the app's default optimiser
    assert step_scale("sgd", 0.001, 0.0) == 1.0  # never above the official weights
    assert step_scale("adam", 0.001, 0.9) == 1.0


def test_fedgen_replies_pass_fedavg_validation(fedgen_cfg: dict) -> None:
    grid, _ = run(fedgen_cfg)
    replies = [m.content for m in grid.received if m.metadata.message_type == "train"]
    assert len(replies) == 6
    validate_message_reply_consistency(replies, "num-examples", check_arrayrecord=True)
    assert all(decode_client_info(c) is not None for c in replies)


def test_generator_state_is_checkpointed_and_restores(fedgen_cfg: dict) -> None:
    _, out = run(fedgen_cfg)
    saved = torch.load(out / "model.pt", weights_only=False)["strategy"]
    assert saved["round"] == 2 and saved["seen-labels"] == list(range(10))
    assert saved["optimizer"]["state"] and saved["scheduler"]["last_epoch"] == 2
    fresh = build_strategy(load_config(fedgen_cfg))
    assert not torch.equal(fresh.generator.out.weight, saved["generator"]["out.weight"])
    fresh.load_state_dict(saved)
    assert fresh.generator_rounds == 2
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.98**2)
    for key, value in fresh.state_dict()["generator"].items():
        assert torch.equal(value, saved["generator"][key]), key


def test_round_draws_report_official_draw_counts(fedgen_cfg: dict) -> None:
    grid, _ = run({**fedgen_cfg, "fedgen.label-counts": "round-draws", "num-server-rounds": 1})
    train = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(train) == 3
    for m in train:
        info = decode_client_info(m.content)
        assert info is not None and sum(info.label_counts) == 10 + 20 * 32  # 1 each + 20 steps of 32


def test_mixed_fo_zo_federation_runs_fedgen(fedgen_cfg: dict) -> None:
    """Issue 4: ZO clients minimise the same regularised objective and upload full weights."""
    cfg = {**fedgen_cfg, "client.trainer": "mixed", "client.zo-fraction": 0.5, "zo.local-steps": 5}
    grid, out = run(cfg, num_nodes=4)
    replies = [m.content for m in grid.received if m.metadata.message_type == "train"]
    trainers = [c[CLIENT_INFO][INFO_TRAINER] for c in replies]
    assert sorted(set(trainers)) == ["fo", "zo"]
    zo_round2 = [c for c in replies[4:] if c[CLIENT_INFO][INFO_TRAINER] == "zo"]
    assert zo_round2 and all(c["metrics"]["backward-passes"] == 0 for c in zo_round2)
    rows = read_rounds(out)
    assert all(r["rejected"] == 0 and r["clients"] == 4 for r in rows[1:])
    assert torch.load(out / "model.pt", weights_only=False)["strategy"]["round"] == 2
