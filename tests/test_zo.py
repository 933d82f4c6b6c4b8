"""The shared zeroth-order core (docs/zeroth-order.md): directions, estimators, updates, BN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedapp.task import zo


def _quadratic(dim: int = 20) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(dim, dim, generator=gen)
    h = a @ a.T / dim + torch.eye(dim)  # SPD Hessian
    theta = [torch.randn(dim, generator=gen)]
    return h, theta[0].clone(), theta


def test_same_seed_gives_the_same_direction_and_restore_is_close() -> None:
    params = [torch.zeros(3, 4), torch.zeros(5)]
    zo.perturb_(params, seed=7, scale=1.0)
    again = [torch.zeros(3, 4), torch.zeros(5)]
    zo.perturb_(again, seed=7, scale=1.0)
    assert all(torch.equal(a, b) for a, b in zip(params, again))
    zo.perturb_(again, seed=8, scale=1.0)
    assert not torch.equal(params[0], again[0])
    zo.perturb_(params, seed=7, scale=-1.0)
    assert all(float(p.abs().max()) == 0.0 for p in params)


def test_sphere_direction_has_unit_norm() -> None:
    params = [torch.zeros(10, 10), torch.zeros(7)]
    zo.perturb_(params, seed=3, scale=1.0, direction="sphere")
    norm = torch.cat([p.flatten() for p in params]).norm()
    assert abs(float(norm) - 1.0) < 1e-5


def test_estimators_recover_the_gradient_of_a_quadratic() -> None:
    h, theta0, params = _quadratic()

    def loss() -> float:
        t = params[0].double()
        return float(0.5 * t @ h.double() @ t)

    true = h @ theta0
    for estimator in ("central", "forward"):
        for direction in ("gaussian", "sphere"):
            seeds = list(range(400))
            grads, clean = zo.projected_gradients(loss, params, seeds, 1e-3, estimator, direction)
            est = torch.zeros_like(theta0)
            for p, g in zo.estimate_tensors(params, seeds, grads, direction):
                est = g
            cos = F.cosine_similarity(est, true, dim=0)
            assert cos > 0.9, (estimator, direction, float(cos))
            assert abs(clean - 0.5 * float(theta0 @ h @ theta0)) < 1e-2
            assert torch.allclose(params[0], theta0, atol=1e-5)


def test_sgd_step_is_replayable_exactly() -> None:
    a = [torch.ones(6, 3), torch.ones(4)]
    b = [t.clone() for t in a]
    zo.sgd_step_(a, [1, 2, 3], [0.5, -0.25, 2.0], lr=0.1)
    zo.sgd_step_(b, [1, 2, 3], [0.5, -0.25, 2.0], lr=0.1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], torch.ones(6, 3))


def test_frozen_bn_stats_leaves_running_statistics_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = model[1].running_mean.clone(), int(model[1].num_batches_tracked)
    with zo.frozen_bn_stats(model):
        model(torch.randn(8, 4) + 3.0)
    assert torch.equal(model[1].running_mean, before[0])
    assert int(model[1].num_batches_tracked) == before[1]
    model(torch.randn(8, 4) + 3.0)
    assert not torch.equal(model[1].running_mean, before[0])


def test_input_estimate_matches_autograd_on_a_smooth_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 2, 2, generator=gen)
    w = torch.randn(3, 2, 2, generator=gen)

    def loss(batch: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(batch * w).sum(dim=(1, 2, 3)) ** 2).mean()

    xg = x.clone().requires_grad_(True)
    loss(xg).backward()
    q, eps = 2000, 1e-3
    u = zo.unit_directions(x.shape, q, seed=5)  # (q, N, 3, 2, 2)
    assert torch.allclose(u.flatten(2).norm(dim=2), torch.ones(q, 4), atol=1e-5)
    assert torch.equal(u, zo.unit_directions(x.shape, q, seed=5))
    losses = torch.stack([loss(x + eps * uj) for uj in u])  # (q,)
    est = zo.input_gradient_estimate(losses, loss(x), u, eps)  # (N, 3, 2, 2)
    # the estimate is of the batch loss summed over samples' directions, scaled 1/N
    cos = F.cosine_similarity(est.flatten(), xg.grad.flatten(), dim=0)
    assert cos > 0.9, float(cos)
