"""FedVTC maths and client steps (our reading of arXiv 2508.01669): decoder, losses, fine-tuning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients.base import FitPlan
from clients.fedvtc import VTCPlan, feature_stats, finetune, train_decoder
from clients.fo import FirstOrderTrainer
from clients.plans import resolve_node
from fedapp.config import NodeConfig, load_config
from fedapp.task.data import Arrays
from fedapp.task.models import VTC_ZOO, ImageSpec, build_model
from fedapp.task.stats import FeatureStats, class_stats
from fedapp.task.vtc import (
    DM_LOSSES,
    VTCDecoder,
    average_states,
    kl_to_class,
    sample_latents,
    synthesize,
)

P = 64
torch.set_num_threads(1)  # the shared CI box: one thread is fastest under contention


@pytest.mark.parametrize(
    ("spec", "params"),
    [
        # ≈245 k (MNIST), ≈308 k (CIFAR): docs/strategies/fedvtc.md (Our reading of the paper)
        (ImageSpec(1, 28, 28, 10), 245_217),
        (ImageSpec(1, 8, 8, 10), 58_017),  # digits
        (ImageSpec(3, 32, 32, 10), 307_907),
    ],
)
def test_decoder_maps_latents_to_images_of_each_supported_size(spec: ImageSpec, params: int) -> None:
    decoder = VTCDecoder(P, spec)
    x = decoder(torch.randn(5, P))
    assert x.shape == (5, spec.channels, spec.height, spec.width)
    assert float(x.detach().min()) >= 0.0 and float(x.detach().max()) <= 1.0
    assert sum(p.numel() for p in decoder.parameters()) == params


def test_decoder_rejects_sizes_not_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        VTCDecoder(P, ImageSpec(1, 30, 30, 10))


def test_zoo_models_share_the_latent_size_and_differ_in_width() -> None:
    spec = ImageSpec(1, 28, 28, 10)
    models = [build_model(name, spec, seed=0) for name in VTC_ZOO]
    assert {m.latent_dim for m in models} == {P}
    sizes = [sum(p.numel() for p in m.parameters()) for m in models]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert all(m.features(torch.zeros(2, 1, 28, 28)).shape == (2, P) for m in models)


def test_models_are_assigned_from_node_config_then_model_clients(run_config: dict) -> None:
    cfg = load_config({**run_config, "strategy": "fedvtc", "model.clients": "vtc-cnn-1,vtc-cnn-2"})
    node = lambda pid, **kw: NodeConfig(partition_id=pid, num_partitions=3, **kw)  # noqa: E731
    assert [resolve_node(node(i), cfg).model for i in range(3)] == [
        "vtc-cnn-1", "vtc-cnn-2", "vtc-cnn-1"
    ]
    assert resolve_node(node(1, model="vtc-cnn-0.5"), cfg).model == "vtc-cnn-0.5"


def toy_stats() -> FeatureStats:
    # classes 0 and 2 present, class 1 absent
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 2.0]])
    var = torch.tensor([[0.25, 0.25], [0.0, 0.0], [1.0, 4.0]])
    return FeatureStats(mean, var, torch.tensor([5, 0, 7]))


def test_sampler_draws_only_present_classes_around_their_means() -> None:
    gen = torch.Generator().manual_seed(0)
    v, y = sample_latents(toy_stats(), 4000, gen)
    assert set(y.tolist()) == {0, 2}
    torch.testing.assert_close(v[y == 2].mean(0), torch.tensor([-1.0, 2.0]), atol=0.15, rtol=0)
    torch.testing.assert_close(v[y == 2].std(0), torch.tensor([1.0, 2.0]), atol=0.1, rtol=0)


def test_kl_term_is_zero_at_the_class_mean_and_ignores_absent_classes() -> None:
    stats = toy_stats()
    y = torch.tensor([0, 2, 1])
    z = torch.stack([stats.mean[0], stats.mean[2], torch.tensor([9.0, 9.0])])
    assert float(kl_to_class(z, y, stats, 1e-4)) == 0.0
    # one row one unit off in dim 0 of class 0: 1 / (2·0.25 + δ), averaged over 2 kept rows
    z[0, 0] += 1.0
    torch.testing.assert_close(kl_to_class(z, y, stats, 1e-4), torch.tensor(0.5 / (0.5 + 1e-4)))


@pytest.mark.parametrize("name", sorted(DM_LOSSES))
def test_dm_losses_vanish_when_decoded_features_match_the_latents(name: str) -> None:
    stats = toy_stats()
    gen = torch.Generator().manual_seed(1)
    v, y = sample_latents(stats, 64, gen)
    v = v - torch.stack([v[y == c].mean(0) for c in y.tolist()]) + stats.mean[y]  # exact means
    assert float(DM_LOSSES[name](v, v, y, stats)) == pytest.approx(0.0, abs=1e-6)
    assert float(DM_LOSSES[name](v + 3.0, v, y, stats)) > 0.1


def test_average_states_weights_floats_and_rounds_integer_buffers() -> None:
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(1)}
    b = {"w": torch.tensor([4.0, 4.0]), "n": torch.tensor(4)}
    out = average_states([a, b], [1.0, 3.0])
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 3.5]))
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 3


def _plan(**kw: object) -> VTCPlan:
    fit = FitPlan(server_round=2, lr=0.05, local_epochs=1, local_steps=0, batch_size=16,
                  optimizer="sgd", momentum=0.9, weight_decay=0.0, proximal_mu=0.0, data_seed=0,
                  max_grad_norm=5.0)
    plan = VTCPlan(fit=fit, lambda_kl=0.1, lambda_dm=1.0, lambda_syn=1.0, delta=1e-4,
                   decoder_lr=1e-2, decoder_epochs=1, synthetic_batch=32, finetune_steps=0,
                   mix_real=True, dm="mean", noise_seed=3)
    return dataclasses.replace(plan, **kw)


def _toy_data(n: int = 64) -> Arrays:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = (rng.random((n, 1, 8, 8)) * 60).astype(np.uint8)
    x[:, :, :, :4] += (y * 60).astype(np.uint8)[:, None, None, None]  # class shows in the left half
    return Arrays(x, y.astype(np.int64))


def test_decoder_phase_lowers_the_reconstruction_loss_and_leaves_the_classifier_alone() -> None:
    torch.manual_seed(0)
    spec, data = ImageSpec(1, 8, 8, 3), _toy_data()
    model, decoder = build_model("vtc-cnn-0.5", spec), VTCDecoder(P, spec)
    stats = feature_stats(model, data, 3, 64, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _plan(decoder_epochs=1)
    first, state = train_decoder(model, decoder, data, stats, plan, None, torch.device("cpu"))
    plan = _plan(decoder_epochs=10)
    later, _ = train_decoder(model, decoder, data, stats, plan, state, torch.device("cpu"))
    assert later.rec_loss < 0.7 * first.rec_loss
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_a_finetuning_pass_on_synthetic_data_lowers_its_loss() -> None:
    torch.manual_seed(0)
    spec, data = ImageSpec(1, 8, 8, 3), _toy_data()
    model, decoder = build_model("vtc-cnn-1", spec), VTCDecoder(P, spec)
    with torch.no_grad():  # an untrained ψ barely varies its images; make classes tell apart
        decoder.project.weight.mul_(10.0)
    stats = class_stats(torch.randn(60, P) + torch.arange(3).repeat(20).unsqueeze(1) * 2.0,
                        torch.arange(3).repeat(20), 3)
    x_syn, y_syn = synthesize(decoder, stats, 96, torch.Generator().manual_seed(5))

    def synthetic_loss() -> float:  # held-out draws from the same class-conditional ψ
        with torch.no_grad():
            return float(F.cross_entropy(model(x_syn), y_syn))

    before = synthetic_loss()
    finetune(model, decoder, data, stats, _plan(mix_real=False, finetune_steps=100),
             torch.device("cpu"), FirstOrderTrainer())
    assert synthetic_loss() < 0.5 * before
