"""The forward-only ``zo`` trainer: it learns, never builds a graph, counts its passes, and
its local update is exactly the (seed, scalar) steps it records; plus trainer choice per node."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from conftest import ROOT
from test_trainer_fo import plan, toy_data
from torch import Tensor

from clients.base import FitPlan, cross_entropy_loss
from clients.plans import mixed_trainer, resolve_node
from clients.zo import ZerothOrderTrainer, ZOPlan, float64_cross_entropy
from fedapp.config import ConfigError, load_config, load_node_config
from fedapp.task import zo
from fedapp.task.evaluate import evaluate
from fedapp.task.models import ImageSpec, SplitModel, build_model
from strategies import card_for

CPU = torch.device("cpu")


def zo_plan(**kw: object) -> ZOPlan:
    names = {f.name for f in fields(FitPlan)}
    base = plan(**{"local_steps": 100, "lr": 1e-2, "momentum": 0.0,
                   **{k: v for k, v in kw.items() if k in names}})
    settings = dict(num_directions=1, mu=1e-3, estimator="central", direction="gaussian",
                    exact_restore=False, seed_base=1, seed_salt=None)
    extra = {**settings, **{k: v for k, v in kw.items() if k not in names}}
    return ZOPlan(**{n: getattr(base, n) for n in names}, **extra)  # type: ignore[arg-type]


def test_zo_update_lowers_the_loss_on_a_separable_toy_problem() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("mlp", spec, seed=0)
    before = evaluate(model, data, 256, CPU).loss
    stats = ZerothOrderTrainer().fit(model, data, zo_plan(), CPU)
    after = evaluate(model, data, 256, CPU).loss
    assert after < 0.85 * before, (before, after)
    assert stats.backward_passes == 0 and stats.peak_mem_mb > 0 and stats.seconds > 0


@pytest.mark.parametrize(("estimator", "per_step"), [("central", 2 * 3), ("forward", 3 + 1)])
def test_pass_counts(estimator: str, per_step: int) -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    stats = ZerothOrderTrainer().fit(build_model("mlp", spec, seed=0), data,
                                     zo_plan(local_steps=5, num_directions=3, estimator=estimator),
                                     CPU)
    assert (stats.forward_passes, stats.backward_passes) == (5 * per_step, 0)
    assert [len(s.seeds) for s in stats.zo_steps] == [3] * 5


def test_no_graph_and_no_grad_buffers_ever() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("fedgen-cnn", spec, seed=0)
    graphs: list[bool] = []

    def watched(m: SplitModel, x: Tensor, y: Tensor) -> Tensor:
        loss = cross_entropy_loss(m, x, y)
        graphs.append(loss.requires_grad or loss.grad_fn is not None)
        return loss

    ZerothOrderTrainer().fit(model, data, zo_plan(local_steps=3, proximal_mu=0.1), CPU, watched)
    assert graphs and not any(graphs)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("direction", ["gaussian", "sphere"])
def test_local_update_is_exactly_its_recorded_steps_with_exact_restore(direction: str) -> None:
    # Replaying the recorded (seed, scalar) steps on a copy of the start model reproduces the
    # trained model bit for bit only if every perturbation was undone exactly: with
    # zo.exact-restore the parameters are copied back from a snapshot after each estimate.
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    trained = build_model("fedgen-cnn", spec, seed=3)
    replica = build_model("fedgen-cnn", spec, seed=3)
    stats = ZerothOrderTrainer().fit(
        trained, data,
        zo_plan(local_steps=10, exact_restore=True, direction=direction, weight_decay=1e-2), CPU,
    )
    zo.replay_(zo.trainable(replica), stats.zo_steps, direction)
    assert all(torch.equal(a, b) for a, b in zip(zo.trainable(trained), zo.trainable(replica)))


def test_perturb_then_restore_is_bit_identical_with_exact_restore() -> None:
    # lr = 0: every step perturbs (+μz, −2μz, +μz per direction) and updates by 0·ĝ
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("fedgen-cnn", spec, seed=3)
    start = [p.detach().clone() for p in zo.trainable(model)]
    ZerothOrderTrainer().fit(model, data, zo_plan(local_steps=5, num_directions=3, lr=0.0,
                                                  exact_restore=True), CPU)
    assert all(torch.equal(a, b) for a, b in zip(zo.trainable(model), start))


def test_in_place_restore_is_close_but_not_claimed_exact() -> None:
    # MeZO's in-place θ+μz−2μz+μz rounds (docs/zeroth-order.md (Seeded in-place perturbation));
    # the drift stays at float32 round-off.
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    trained, replica = build_model("fedgen-cnn", spec, seed=3), build_model("fedgen-cnn", spec, seed=3)
    stats = ZerothOrderTrainer().fit(trained, data, zo_plan(local_steps=10), CPU)
    zo.replay_(zo.trainable(replica), stats.zo_steps)
    for a, b in zip(zo.trainable(trained), zo.trainable(replica)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_batchnorm_running_statistics_move_once_per_step() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("fedgen-cnn", spec, seed=0)
    ZerothOrderTrainer().fit(model, data, zo_plan(local_steps=4, num_directions=3), CPU)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 4 for m in bns)


def test_projected_gradient_is_far_above_float32_noise() -> None:
    # docs/zeroth-order.md (Consistency inside one estimate): at the default mu the loss
    # difference must dwarf the round-off of a restore.
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("fedgen-cnn", spec, seed=0).eval()
    x = torch.from_numpy(data.x[:32]).float() / 255
    y = torch.from_numpy(data.y[:32])
    params = zo.trainable(model)

    def loss() -> float:
        with torch.inference_mode():
            return float(float64_cross_entropy(model, x, y))

    clean = loss()
    grads, _ = zo.projected_gradients(loss, params, list(range(20)), 1e-3, model=model)
    noise = abs(loss() - clean)  # the same θ after 20 in-place perturb/restore cycles
    signal = min(abs(g) * 1e-3 for g in grads)  # |L+ − L−| / 2
    assert signal > 100 * max(noise, 1e-12), (signal, noise)


def _direction_digest(seed: int) -> str:
    params = [torch.zeros(17, 5), torch.zeros(3, 3, 2)]
    zo.perturb_(params, seed, 1.0)
    return hashlib.sha256(b"".join(p.numpy().tobytes() for p in params)).hexdigest()


def test_same_seed_gives_the_same_direction_in_a_fresh_process() -> None:
    code = ("import hashlib, torch; from fedapp.task import zo; "
            "p = [torch.zeros(17, 5), torch.zeros(3, 3, 2)]; zo.perturb_(p, 1234, 1.0); "
            "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in p)).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    torch.manual_seed(999)  # the global RNG plays no part
    assert out.stdout.strip() == _direction_digest(1234) != _direction_digest(1235)


def test_zo_trainer_rejects_a_plain_plan() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    with pytest.raises(TypeError, match="ZOPlan"):
        ZerothOrderTrainer().fit(build_model("mlp", spec, seed=0), data, plan(), CPU)


def test_momentum_and_forward_estimator_also_learn() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("mlp", spec, seed=0)
    before = evaluate(model, data, 256, CPU).loss
    ZerothOrderTrainer().fit(model, data, zo_plan(lr=3e-3, momentum=0.9, estimator="forward"), CPU)
    assert evaluate(model, data, 256, CPU).loss < 0.85 * before


def test_trainer_choice_per_node(run_config: dict) -> None:
    cfg = load_config({**run_config, "client.trainer": "mixed", "client.zo-fraction": 0.5})
    kinds = [resolve_node(load_node_config({"partition-id": i, "num-partitions": 10}), cfg).trainer
             for i in range(10)]
    assert kinds == ["zo"] * 5 + ["fo"] * 5
    node = load_node_config({"partition-id": 0, "num-partitions": 10, "trainer": "fo"})
    assert resolve_node(node, cfg).trainer == "fo"  # node config wins
    assert mixed_trainer(2, 3, 1.0) == "zo" and mixed_trainer(0, 3, 0.0) == "fo"
    with pytest.raises(ConfigError, match="zo.momentum must be 0"):
        card_for(load_config({**run_config, "strategy": "zo-seed", "client.trainer": "zo",
                              "zo.momentum": 0.9}))
    with pytest.raises(ConfigError, match="cannot use client.trainer 'mixed'"):
        card_for(load_config({**run_config, "strategy": "zo-seed", "client.trainer": "mixed"}))
