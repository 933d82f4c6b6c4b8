"""FedZGE maths (fedapp/task/fedzge.py): generator, loss terms, ZO estimate, KD, weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clients.fedzge import query_answer
from fedapp.config import ModelConfig, parse_model_map
from fedapp.task import fedzge as zge
from fedapp.task.models import ImageSpec, build_model
from fedapp.task.zo import unit_directions

MNIST = ImageSpec(1, 28, 28, 10)
CIFAR = ImageSpec(3, 32, 32, 10)


def test_generator_adapts_to_the_dataset_and_matches_the_official_size() -> None:
    for spec in (MNIST, CIFAR, ImageSpec(1, 8, 8, 10)):
        g = zge.ImageGenerator(spec)
        lat = zge.sample_latents(6, 100, spec.num_classes, seed=1)
        x = g(lat.z, lat.y)
        assert x.shape == (6, spec.channels, spec.height, spec.width)
        assert float(x.detach().abs().max()) <= 1.0  # tanh output, as officially
    n_params = sum(p.numel() for p in zge.ImageGenerator(CIFAR).parameters())
    assert abs(n_params - 2.04e6) < 0.01e6  # docs/strategies/fedzge.md (Architectures): ≈ 2.04 M
    with pytest.raises(ValueError, match="divisible by 4"):
        zge.ImageGenerator(ImageSpec(1, 30, 30, 10))


def test_latents_are_seeded_and_labels_sorted() -> None:
    a, b = zge.sample_latents(50, 8, 10, seed=3), zge.sample_latents(50, 8, 10, seed=3)
    assert torch.equal(a.z, b.z) and torch.equal(a.y, b.y)
    assert torch.equal(a.y, a.y.sort().values)
    assert not torch.equal(a.z, zge.sample_latents(50, 8, 10, seed=4).z)


def test_ensemble_weights_follow_data_size_and_renormalise() -> None:
    # Two clients with 1 and 3 examples: weights 1/4 and 3/4.
    w = zge.ensemble_weights([1, 3])
    torch.testing.assert_close(w, torch.tensor([0.25, 0.75], dtype=torch.float64))
    a, b = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    torch.testing.assert_close(zge.ensemble_logits([a, b], [1, 3]), torch.full((2, 3, 4), 0.75))
    # A client that did not answer is simply absent: the rest renormalise to 1.
    torch.testing.assert_close(zge.ensemble_logits([b], [3]), b)
    with pytest.raises(ValueError):
        zge.ensemble_weights([])


def test_diversity_loss_equals_the_naive_pairwise_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(5, 2, 3, 3, generator=gen), torch.randn(5, 4, generator=gen)
    flat = x.flatten(1)
    d_x = ((flat[:, None] - flat[None]) ** 2).mean(2)
    d_z = ((z[:, None] - z[None]) ** 2).mean(2)
    torch.testing.assert_close(zge.diversity_loss(x, z), torch.exp(-(d_x * d_z).mean()))


def test_info_term_own_is_negative_entropy_and_official_mixes_marginals() -> None:
    p, ref = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    torch.testing.assert_close(zge.info_loss(p, p), torch.tensor(math.log(0.5)))
    expected = 0.5 * math.log(0.25) + 0.5 * math.log(0.75)
    torch.testing.assert_close(zge.info_loss(p, ref), torch.tensor(expected))


def test_kd_loss_is_zero_at_the_teacher_and_scaled_by_t_squared() -> None:
    t = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert float(zge.kd_loss(t, t, 5.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.zeros(4, 10)
    kl = F.kl_div(F.log_softmax(s / 5, 1), F.softmax(t / 5, 1), reduction="batchmean")
    torch.testing.assert_close(zge.kd_loss(s, t, 5.0), 25 * kl)
    torch.testing.assert_close(zge.adversarial_loss(t, s, 5.0), -kl)


def _reference_loss(
    x: torch.Tensor, clients: list[nn.Module], sizes: list[int], server: nn.Module,
    lat: zge.Latents, w: zge.GeneratorLossWeights,
) -> torch.Tensor:
    """L_G(x) composed by hand from the term functions, differentiable in x."""
    ens = sum(n / sum(sizes) * c(x) for c, n in zip(clients, sizes))
    marginal = zge.class_marginal(ens)
    return (zge.fidelity_loss(ens, lat.y) + w.adversarial * zge.adversarial_loss(ens, server(x), w.temperature)
            + w.diversity * zge.diversity_loss(x, lat.z) + w.info * zge.info_loss(marginal, marginal))


def test_zo_estimate_through_a_toy_generator_matches_autograd() -> None:
    # Toy: a linear generator (8 -> 2x2x3 images), two linear "clients", a linear server.
    torch.manual_seed(0)
    spec_dim, n, q, eps = (3, 2, 2), 3, 2000, 1e-3
    gen = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Unflatten(1, spec_dim))
    clients = [nn.Sequential(nn.Flatten(), nn.Linear(12, 4)) for _ in range(2)]
    server = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    lat = zge.Latents(torch.randn(n, 8), torch.tensor([0, 1, 3]))
    w = zge.GeneratorLossWeights(1.0, 1.0, 1.0, 5.0)
    sizes = [10, 30]
    # Autograd reference: dL/dθ_G of the hand-composed loss.
    _reference_loss(gen(lat.z), clients, sizes, server, lat, w).backward()
    true = torch.cat([p.grad.flatten() for p in gen.parameters()])
    gen.zero_grad()
    # ZO: queries, black-box answers, L_G per batch, ĝ_x, VJP through G.
    x = gen(lat.z)
    u = unit_directions(x.shape, q, seed=5)
    queries = zge.perturbed_queries(x.detach(), u, eps)
    answers = [query_answer(c, x.detach(), queries, q, 0, eps, torch.device("cpu")) for c in clients]
    ensemble = zge.ensemble_logits(answers, sizes)
    batches = torch.cat([x.detach().unsqueeze(0), queries])
    with torch.no_grad():
        server_logits = torch.stack([server(b) for b in batches])
    losses = zge.generator_losses(ensemble, server_logits, batches, lat, w, "own")
    ref = _reference_loss(x.detach(), clients, sizes, server, lat, w).detach()
    assert float(losses[0]) == pytest.approx(float(ref), rel=1e-5)
    grad_x = zge.zo_image_gradient(losses, u, eps)
    x.backward(grad_x)
    est = torch.cat([p.grad.flatten() for p in gen.parameters()])
    assert float(F.cosine_similarity(est, true, dim=0)) > 0.95  # 0.995 at q = 2000, d = 36
    # The estimate is ∇_x L_G / N (the official 1/N heuristic).
    assert float(est.norm() / true.norm()) == pytest.approx(1 / n, rel=0.3)


def test_exact_diversity_adds_its_autograd_gradient() -> None:
    torch.manual_seed(0)
    g = zge.ImageGenerator(ImageSpec(1, 8, 8, 10), latent_dim=4, width=4)
    lat = zge.sample_latents(6, 4, 10, seed=0)
    grads = {}
    for weight in (0.0, 2.0):
        g.zero_grad()
        x = g(lat.z, lat.y)
        zge.generator_step(g, torch.optim.SGD(g.parameters(), lr=0.0), x, torch.zeros_like(x),
                           lat, weight)
        grads[weight] = g.fc.weight.grad.clone()
    g.zero_grad()
    (2.0 * zge.diversity_loss(g(lat.z, lat.y), lat.z)).backward()
    assert float(grads[0.0].abs().max()) == 0.0
    torch.testing.assert_close(grads[2.0], g.fc.weight.grad)


def test_seed_transport_rebuilds_the_server_batches_bitwise() -> None:
    spec = ImageSpec(1, 28, 28, 10)
    g = zge.ImageGenerator(spec)
    lat = zge.sample_latents(20, 100, 10, seed=0)
    x = g(lat.z, lat.y).detach()
    u = unit_directions(x.shape, 5, seed=11)
    sent = zge.perturbed_queries(x, u, 1e-3)  # what tensor transport ships
    rebuilt = zge.seeded_queries(x, 5, 11, 1e-3)  # what a client rebuilds in seed transport
    assert torch.equal(sent, rebuilt)
    model = build_model("fedgen-cnn", spec, seed=0)
    cpu = torch.device("cpu")
    a = query_answer(model, x, sent, 5, 0, 1e-3, cpu)
    b = query_answer(model, x, None, 5, 11, 1e-3, cpu)
    assert a.shape == (6, 20, 10) and torch.equal(a, b)
    losses = zge.generator_losses(a, a, torch.cat([x[None], sent]), lat,
                                  zge.GeneratorLossWeights(1, 1, 1, 5))
    assert torch.equal(zge.zo_image_gradient(losses, u, 1e-3),
                       zge.zo_image_gradient(losses, unit_directions(x.shape, 5, 11), 1e-3))


def test_distill_moves_the_student_towards_the_teacher() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)
    x = torch.randn(32, 6)
    with torch.no_grad():
        t = teacher(x)
    with torch.no_grad():
        before = float(zge.kd_loss(student(x), t, 5.0))
    zge.distill(student, x, t, 5.0, steps=50, lr=0.05)
    with torch.no_grad():
        after = float(zge.kd_loss(student(x), t, 5.0))
    assert after < 0.2 * before


def test_client_model_map_by_id_or_round_robin() -> None:
    assert parse_model_map("0:cnn, 2:mlp") == {0: "cnn", 2: "mlp"}
    assert parse_model_map("cnn,mlp") == ["cnn", "mlp"]
    assert parse_model_map("") == []
    for bad in ("0:vgg", "0:cnn,mlp", "x:cnn"):
        with pytest.raises(ValueError):
            parse_model_map(bad)
    cfg = ModelConfig(name="resnet18", clients="cnn,mlp,fedgen-cnn")
    assert [cfg.for_partition(i) for i in range(4)] == ["cnn", "mlp", "fedgen-cnn", "cnn"]
    assert ModelConfig(name="mlp", clients="1:cnn").for_partition(0) == "mlp"
    assert ModelConfig(name="mlp", clients="").for_partition(3) == "mlp"


def test_per_sample_coefficients_reduce_the_variance_of_the_estimate() -> None:
    # Many images, few directions: one difference per batch mixes every sample's change.
    torch.manual_seed(0)
    n, q, eps = 64, 20, 1e-3
    client = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    server = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    lat = zge.Latents(torch.randn(n, 8), torch.randint(0, 4, (n,)))
    w = zge.GeneratorLossWeights(1.0, 0.0, 0.0, 5.0)  # the separable terms only
    x = torch.randn(n, 3, 2, 2, requires_grad=True)
    _reference_loss(x, [client], [1], server, lat, w).backward()
    u = unit_directions(x.shape, q, seed=2)
    queries = zge.perturbed_queries(x.detach(), u, eps)
    ens = query_answer(client, x.detach(), queries, q, 0, eps, torch.device("cpu"))
    batches = torch.cat([x.detach().unsqueeze(0), queries])
    with torch.no_grad():
        srv = torch.stack([server(b) for b in batches])
    cos = {}
    for per_sample in (False, True):
        losses = zge.generator_losses(ens, srv, batches, lat, w, per_sample=per_sample)
        est = zge.zo_image_gradient(losses, u, eps)
        cos[per_sample] = float(F.cosine_similarity(est.flatten(), x.grad.flatten(), dim=0))
    # per-sample: E[cos] ≈ √(q / (q + D − 1)) = √(20/31) ≈ 0.80 for D = 12 (0.79-0.81 over
    # direction seeds); one batch-level coefficient mixes all 64 samples (≈ 0.17)
    assert cos[True] > 0.75 > 0.5 > cos[False], cos
