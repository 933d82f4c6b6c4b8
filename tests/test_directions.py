"""The device-independent direction generator (fedapp.task.directions, issue 17).

A NumPy uint64 reference, written from the definition and sharing no code with
the torch kernels, must agree with them bit for bit; chunking must not matter;
replay must rebuild identical models; the estimator must still estimate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedapp.task import directions, zo
from fedapp.task.fedzge import seeded_queries
from fedapp.task.models import ImageSpec, build_model

CUDA = torch.cuda.is_available()
M32 = np.uint64(0xFFFFFFFF)


def _splitmix64(seed: int) -> tuple[int, int]:
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return int(z & M32), int(z >> np.uint64(32))


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & M32  # < 2^64: no wrap needed in uint64
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & M32
    return x ^ (x >> np.uint64(16))


def reference(seed: int, start: int, n: int) -> np.ndarray:
    """z_int(seed)[start : start+n] from the definition, in uint64 (int64 result)."""
    k0, k1 = _splitmix64(seed)
    x = np.arange(start, start + n, dtype=np.uint64) ^ np.uint64(k0)
    x = _lowbias32(_lowbias32(x) ^ np.uint64(k1))
    total = sum((x >> np.uint64(8 * b)) & np.uint64(0xFF) for b in range(4))
    return total.astype(np.int64) - 510


@pytest.mark.parametrize(("seed", "start", "n"), [
    (0, 0, 1), (1, 0, 4097), (2**32 - 1, 12345, 70001), (987654321, 2**31 - 5000, 4999),
])
def test_torch_kernels_match_the_numpy_reference_bit_for_bit(seed: int, start: int, n: int) -> None:
    want = reference(seed, start, n)
    got = directions.normals(seed, start, n).numpy()
    assert got.dtype == np.float32 and np.array_equal(got.astype(np.int64), want)
    # the functional kernel that torch.compile fuses on CUDA, run eagerly here
    k0, k1 = directions.seed_keys(seed)
    fused = directions._fused_kernel(torch.tensor([start, k0, k1], dtype=torch.int32), n)
    assert np.array_equal(fused.numpy().astype(np.int64), want)


def test_integer_normals_have_the_stated_moments_and_no_visible_correlation() -> None:
    n = 1 << 20
    a = directions.normals(5, 0, n).double() / directions.SIGMA
    b = directions.normals(6, 0, n).double() / directions.SIGMA
    tol = 5 / math.sqrt(n)  # five standard errors of a mean of n unit-variance terms
    assert abs(float(a.mean())) < tol
    assert abs(float(a.square().mean()) - 1) < 5 * math.sqrt(1.7 / n)  # Var(z²) ≈ 1.7
    assert abs(float((a[1:] * a[:-1]).mean())) < tol  # neighbours
    assert abs(float((a * b).mean())) < tol  # consecutive seeds
    assert float(a.abs().max()) <= 510 / directions.SIGMA
    kurtosis = float(a.pow(4).mean())
    assert abs(kurtosis - 2.7) < 0.02  # Irwin-Hall(4): 3 - 6/(5*4)


def test_exact_coefficients_make_every_product_exact() -> None:
    rng = np.random.default_rng(0)
    z = np.arange(-510, 511, dtype=np.float64)
    for a in rng.standard_normal(200) * 10.0 ** rng.integers(-8, 3, 200):
        c = directions.exact_coefficient(float(a))
        assert abs(c - a) <= abs(a) * 2.0**-15
        assert float(np.float32(c)) == c
        exact = c * z  # float64 holds the exact product of a 15-bit and a 9-bit number
        assert np.array_equal(exact.astype(np.float32).astype(np.float64), exact)


def _tensors() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen) for shape in [(7, 3), (1,), (5, 4, 3), (1000,), (33,)]]


def test_chunking_does_not_change_a_single_bit() -> None:
    base = _tensors()
    want = [t.clone() for t in base]
    flat = directions.normals(11, 0, sum(t.numel() for t in base))
    offset = 0
    for t in want:
        t += directions.exact_coefficient(0.37) * flat[offset:offset + t.numel()].view_as(t)
        offset += t.numel()
    for chunk in (1, 7, 64, 1000, None):
        got = [t.clone() for t in base]
        directions.add_direction_(got, 11, 0.37, chunk=chunk)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), chunk


def test_several_coefficients_in_one_pass_equal_successive_passes() -> None:
    one, two = _tensors(), _tensors()
    directions.add_direction_(one, 3, [1e-3, -0.25])
    directions.add_direction_(two, 3, 1e-3)
    directions.add_direction_(two, 3, -0.25)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_square_norm_is_the_exact_integer_sum() -> None:
    n = 100_003
    want = int((reference(9, 0, n) ** 2).sum())
    assert directions.square_norm(9, n, chunk=4096) == want
    params = [torch.zeros(n)]
    assert zo.direction_norm(params, 9) == math.sqrt(want) / directions.SIGMA


def test_replay_of_a_history_rebuilds_identical_state_dicts(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ImageSpec(3, 8, 8, 4)
    history = [
        zo.ZORound(round=t, seed_base=100 + t, steps=tuple(
            zo.ZOStep(seeds=tuple(zo.step_seeds(100 + t, h, 2)), grads=(0.5 - t, 0.25 * h),
                      lr=1e-2, num_directions=2, weight_decay=1e-3 * (h % 2))
            for h in range(3)))
        for t in range(1, 4)
    ]
    states = []
    for chunk in (1 << 18, 1000):  # a second replica with a different chunking
        monkeypatch.setitem(directions.CHUNK, "cpu", chunk)
        for direction in ("gaussian", "sphere"):
            model = build_model("cnn", spec, seed=0)
            assert zo.replay_rounds_(zo.trainable(model), history, 1, direction) == 4
            states.append(model.state_dict())
    start = build_model("cnn", spec, seed=0).state_dict()
    for a, b in ((states[0], states[2]), (states[1], states[3])):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(states[0][k], start[k]) for k in start)


@pytest.mark.parametrize("direction", ["gaussian", "sphere"])
def test_the_estimator_estimates_the_gradient_of_half_the_squared_norm(direction: str) -> None:
    # f(θ) = ½||θ||²: ∇f = θ and the central difference is exact, g_p = θ·v_p. So
    # ĝ = (c/P) Σ (θ·v_p) v_p is a mean of P i.i.d. terms with E = θ and
    # E||ĝ − θ||² = (m4 + d − 2)||θ||²/P (gaussian, m4 = E z⁴ = 2.7) or (d − 1)||θ||²/P
    # (sphere). ||ĝ − θ||² is then ≈ a scaled χ²_d: twice its root-mean-square is a
    # bound that a correct estimator misses with probability < 1e-3.
    d, num = 8, 4000
    theta = torch.linspace(-1.0, 2.0, d)
    params = [theta.clone()]

    def loss() -> float:
        return 0.5 * float(params[0].double().square().sum())

    seeds = list(range(num))
    grads, clean = zo.projected_gradients(loss, params, seeds, 1e-2, "central", direction)
    (_, est), = zo.estimate_tensors(params, seeds, grads, direction)
    rms = math.sqrt(((2.7 + d - 2) if direction == "gaussian" else (d - 1)) / num)
    rel = float((est - theta).norm() / theta.norm())
    assert rel < 2 * rms, (rel, rms)
    assert abs(clean - loss()) < 1e-3
    # 4000 in-place +μ, −2μ, +μ cycles: a float32 round-off random walk, √12000·ulp(2) ≈ 3e-5
    torch.testing.assert_close(params[0], theta, rtol=0, atol=1e-4)


def test_fedzge_directions_are_unit_and_reproducible() -> None:
    u = zo.unit_directions((4, 3, 5, 5), 6, seed=2)  # (q, N, *x)
    assert u.shape == (6, 4, 3, 5, 5)
    torch.testing.assert_close(u.flatten(2).norm(dim=2), torch.ones(6, 4), rtol=0, atol=1e-6)
    assert torch.equal(u, zo.unit_directions((4, 3, 5, 5), 6, seed=2))
    want = torch.from_numpy(reference(2, 0, u.numel()).astype(np.float32)).view(6, 4, -1)
    assert torch.equal((u.flatten(2) > 0), (want > 0))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", ["eager", "auto"])
def test_cpu_and_cuda_give_the_same_bits(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDZG_ZO_BACKEND", kernel)
    cpu = _tensors()
    gpu = [t.cuda() for t in cpu]
    for seed, coeffs in ((1, 0.3), (2, [1e-3, -2e-3, 1e-3, -0.1])):
        directions.add_direction_(cpu, seed, coeffs)
        directions.add_direction_(gpu, seed, coeffs)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu, strict=True))
    n = 3 * (1 << 22) + 17
    assert torch.equal(directions.normals(4, 5, n), directions.normals(4, 5, n, "cuda").cpu())
    assert torch.equal(zo.unit_directions((7, 3, 4, 4), 3, 8),
                       zo.unit_directions((7, 3, 4, 4), 3, 8, "cuda").cpu())
    x = torch.rand(7, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seeded_queries(x, 3, 8, 1e-3), seeded_queries(x.cuda(), 3, 8, 1e-3).cpu())
    spec = ImageSpec(3, 8, 8, 4)
    steps = [zo.ZOStep(seeds=(s, s + 1), grads=(0.3, -1.2), lr=0.05, num_directions=2,
                       weight_decay=1e-2) for s in range(5)]
    for direction in ("gaussian", "sphere"):
        a, b = build_model("cnn", spec, seed=0), build_model("cnn", spec, seed=0).cuda()
        zo.replay_(zo.trainable(a), steps, direction)
        zo.replay_(zo.trainable(b), steps, direction)
        assert all(torch.equal(x, y.cpu()) for x, y in zip(zo.trainable(a), zo.trainable(b)))
