"""Split trainers (HERON-SFL ``split-zo``, CSE-FSL ``split-fo``) on toy problems, no Flower."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients import TRAINERS, split_trainer
from clients.split import SplitFirstOrderTrainer, SplitPlan, SplitZerothOrderTrainer
from fedapp.task.data import Arrays, batches
from fedapp.task.models import ImageSpec
from fedapp.task.seeding import torch_generator
from fedapp.task.split import SplitParts, build_split
from fedapp.task.zo_optim import TensorAdam

SPEC = ImageSpec(1, 4, 4, 2)  # 16 "pixels", 2 classes
CPU = torch.device("cpu")


def toy_data(n: int = 64) -> Arrays:
    """Class 1 is bright on the left half, class 0 on the right: linearly separable."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 100, (n, 1, 4, 4))
    x[y == 1, :, :, :2] += 150
    x[y == 0, :, :, 2:] += 150
    return Arrays(x.astype(np.uint8), y.astype(np.int64))


def aux_loss(parts: SplitParts, data: Arrays) -> float:
    x = torch.from_numpy(data.x).float() / 255.0
    with torch.no_grad():
        return float(F.cross_entropy(parts.aux(parts.front(x)), torch.from_numpy(data.y)))


def plan(**kw: object) -> SplitPlan:
    base: dict[str, object] = dict(
        server_round=1, local_steps=150, upload_every=5, batch_size=64, lr=1e-2,
        optimizer="adam", data_seed=1, direction_seed=2,
    )
    return SplitPlan(**{**base, **kw})  # type: ignore[arg-type]


def test_zo_client_lowers_the_aux_loss_without_autograd() -> None:
    # Prepare: an MLP cut after its hidden layer (d = 16*64 + 64 + 64*2 + 2 = 1218)
    parts, data = build_split("mlp", SPEC, seed=0, aux_seed=1), toy_data()
    before = aux_loss(parts, data)
    # Execute: 150 forward-difference sphere steps, P = 1, Adam lr 1e-2
    out = SplitZerothOrderTrainer().fit_split(parts.front, parts.aux, data, plan(), CPU)
    # Assert: the aux loss fell well below its start; forwards only, 2 per step
    after = aux_loss(parts, data)
    assert after < 0.5 * before, (before, after)
    assert all(p.grad is None for p in parts.local().parameters())
    assert (out.stats.forward_passes, out.stats.backward_passes) == (2 * 150, 0)
    assert out.steps == 150 and out.step.flops > 0 and out.step.peak_mem_mb > 0


def test_fo_client_lowers_the_aux_loss_with_one_backward_per_step() -> None:
    parts, data = build_split("mlp", SPEC, seed=0, aux_seed=1), toy_data()
    before = aux_loss(parts, data)
    out = SplitFirstOrderTrainer().fit_split(parts.front, parts.aux, data, plan(local_steps=30), CPU)
    assert aux_loss(parts, data) < 0.5 * before
    assert (out.stats.forward_passes, out.stats.backward_passes) == (30, 30)


@pytest.mark.parametrize(
    ("name", "estimator"), [("split-zo", "forward"), ("split-zo", "central"), ("split-fo", "forward")]
)
def test_uploads_are_the_cut_activations_of_every_kth_batch(name: str, estimator: str) -> None:
    # Prepare: h = 7 steps of B = 16 over 64 examples (4 batches an epoch), k = 3
    spec = ImageSpec(1, 8, 8, 2)
    parts, toy = build_split("fedgen-cnn", spec, seed=0), toy_data()
    data = Arrays(np.repeat(np.repeat(toy.x, 2, axis=2), 2, axis=3), toy.y)  # (64, 1, 8, 8)
    initial = copy.deepcopy(parts.front).train()
    p = plan(local_steps=7, upload_every=3, batch_size=16, estimator=estimator)
    # Execute
    out = split_trainer(name).fit_split(parts.front, parts.aux, data, p, CPU)
    # Assert: the batches of steps 0, 3 and 6 (epoch 2 draws a new permutation) went up
    gen = torch_generator(p.data_seed)
    steps = [*batches(data, 16, CPU, gen), *batches(data, 16, CPU, gen)]
    assert out.batch_sizes == [16, 16, 16]
    assert out.labels.tolist() == torch.cat([steps[i][1] for i in (0, 3, 6)]).tolist()
    assert out.acts.shape == (48, *parts.cut_shape) and out.acts.dtype == torch.float32
    with torch.no_grad():  # step 0's activations: the clean front before any update
        torch.testing.assert_close(out.acts[:16], initial(steps[0][0]))


def test_zo_step_is_reproducible_from_its_seeds() -> None:
    runs = []
    for _ in range(2):
        parts = build_split("mlp", SPEC, seed=0, aux_seed=1)
        SplitZerothOrderTrainer().fit_split(parts.front, parts.aux, toy_data(), plan(local_steps=5), CPU)
        runs.append(parts.local().state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_tensor_adam_matches_torch_adam_on_the_same_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    b = [t.clone().requires_grad_() for t in a]
    ours, ref = TensorAdam(a, lr=0.1), torch.optim.Adam(b, lr=0.1)
    for _ in range(3):
        grads = [torch.randn(t.shape, generator=gen) for t in a]
        ours.step_(iter(zip(a, grads, strict=True)))
        for t, g in zip(b, grads, strict=True):
            t.grad = g.clone()
        ref.step()
    for t, r in zip(a, b, strict=True):
        torch.testing.assert_close(t, r.detach())


def test_split_trainers_are_registered_and_fo_is_not_a_split_trainer() -> None:
    assert {"split-zo", "split-fo"} <= set(TRAINERS)
    with pytest.raises(ValueError, match="does not train split models"):
        split_trainer("fo")


@pytest.mark.parametrize(
    ("options", "forwards"),
    [
        # central: 2P forwards a step, plus one clean forward on each upload step (0, 5)
        ({"estimator": "central", "directions": 2}, 10 * 4 + 2),
        ({"direction": "gaussian", "smoothing": 1e-2, "optimizer": "sgd", "lr": 1e-4}, 10 * 2),
        ({"bn": "eval", "directions": 3}, 10 * 4),
    ],
)
def test_zo_options_run_and_count_their_forwards(options: dict[str, object], forwards: int) -> None:
    parts, data = build_split("fedgen-cnn", ImageSpec(1, 4, 4, 2), seed=0), toy_data()
    bn = parts.front.chain[1]
    running_mean = bn.running_mean.clone()
    out = SplitZerothOrderTrainer().fit_split(
        parts.front, parts.aux, data, plan(local_steps=10, batch_size=16, **options), CPU
    )
    assert (out.stats.forward_passes, out.stats.backward_passes) == (forwards, 0)
    assert all(torch.isfinite(p).all() for p in parts.local().parameters())
    moved = not torch.equal(bn.running_mean, running_mean)
    assert moved == (options.get("bn") != "eval")  # eval mode never touches running stats
