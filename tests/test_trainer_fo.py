"""First-order trainer: it learns, counts its passes, and honours FedProx's proximal term."""

from __future__ import annotations

import numpy as np
import torch

from clients.base import FitPlan
from clients.fo import FirstOrderTrainer
from clients.plans import resolve_node
from fedapp.config import load_config, load_node_config
from fedapp.task.data import Arrays
from fedapp.task.evaluate import evaluate
from fedapp.task.models import ImageSpec, build_model


def toy_data(n: int = 256, seed: int = 0) -> Arrays:
    """Two classes separable by brightness of the left half of an 8x8 image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 100, (n, 1, 8, 8)).astype(np.uint8)
    x[y == 1, :, :, :4] += 150
    return Arrays(x, y.astype(np.int64))


def plan(**kw: object) -> FitPlan:
    base = dict(server_round=1, lr=0.1, local_epochs=3, local_steps=0, batch_size=32,
                optimizer="sgd", momentum=0.9, weight_decay=0.0, proximal_mu=0.0, data_seed=0)
    return FitPlan(**{**base, **kw})  # type: ignore[arg-type]


def test_fo_training_lowers_the_loss() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("mlp", spec, seed=0)
    before = evaluate(model, data, 256, torch.device("cpu")).loss
    stats = FirstOrderTrainer().fit(model, data, plan(), torch.device("cpu"))
    after = evaluate(model, data, 256, torch.device("cpu"))
    assert after.loss < 0.5 * before and after.accuracy > 0.95
    assert stats.forward_passes == stats.backward_passes == 3 * 8  # 3 epochs x 8 batches
    assert stats.num_examples == 256 and stats.peak_mem_mb > 0 and stats.seconds > 0


def test_local_steps_override_epochs() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    stats = FirstOrderTrainer().fit(build_model("mlp", spec, seed=0), data, plan(local_steps=20), torch.device("cpu"))
    assert stats.forward_passes == 20  # crosses an epoch boundary (8 batches per epoch)


def _distance_after(mu: float) -> float:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    model = build_model("mlp", spec, seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    FirstOrderTrainer().fit(model, data, plan(proximal_mu=mu, momentum=0.0), torch.device("cpu"))
    return float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start)) ** 0.5)


def test_proximal_term_keeps_weights_near_the_global_model() -> None:
    assert _distance_after(5.0) < 0.5 * _distance_after(0.0)


def test_training_is_deterministic_for_a_data_seed() -> None:
    data, spec = toy_data(), ImageSpec(1, 8, 8, 2)
    a, b = build_model("mlp", spec, seed=0), build_model("mlp", spec, seed=0)
    FirstOrderTrainer().fit(a, data, plan(), torch.device("cpu"))
    FirstOrderTrainer().fit(b, data, plan(), torch.device("cpu"))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_node_config_wins_over_run_config(run_config: dict) -> None:
    cfg = load_config(run_config)
    node = resolve_node(load_node_config({"partition-id": 1, "num-partitions": 2, "model": "mlp", "device": "cpu"}), cfg)
    assert (node.model, node.trainer, node.device.type) == ("mlp", "fo", "cpu")
    default = resolve_node(load_node_config({"partition-id": 0, "num-partitions": 2}), cfg)
    assert default.model == cfg.model.name and default.data_path is None
