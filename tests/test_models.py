"""Models: official sizes, the features/head split, and input adaptation."""

from __future__ import annotations

import pytest
import torch

from fedapp.task.models import MODELS, ImageSpec, build_model

SPECS = [ImageSpec(1, 28, 28, 10), ImageSpec(3, 32, 32, 100), ImageSpec(1, 8, 8, 10)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_fedgen_cnn_matches_official_size() -> None:
    # docs/strategies/fedgen.md (Architectures): 26,434 parameters on MNIST (1x28x28, 10
    # classes), latent 32
    model = build_model("fedgen-cnn", ImageSpec(1, 28, 28, 10))
    assert n_params(model) == 26_434
    assert model.latent_dim == 32


def test_resnet18_cifar_size() -> None:
    # CIFAR-style ResNet-18 (3x3 stem, no max-pool), 10 classes: 11.17 M (PLATFORM §7)
    assert n_params(build_model("resnet18", ImageSpec(3, 32, 32, 10))) == 11_173_962


@pytest.mark.parametrize("name", [n for n in MODELS if not n.startswith("resnet")] + ["resnet18"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.channels}x{s.height}-{s.num_classes}")
def test_split_composes_to_forward(name: str, spec: ImageSpec) -> None:
    model = build_model(name, spec, seed=0).eval()
    x = torch.rand(3, spec.channels, spec.height, spec.width)
    z = model.features(x)
    assert z.shape == (3, model.latent_dim)
    torch.testing.assert_close(model.head(z), model(x), rtol=0, atol=0)
    assert model(x).shape == (3, spec.num_classes)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    spec = SPECS[0]
    state = torch.random.get_rng_state()
    a, b = build_model("cnn", spec, seed=7), build_model("cnn", spec, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = build_model("cnn", spec, seed=8)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
