"""Split models (HERON-SFL, docs/strategies/heron-sfl.md): front + back is the unsplit model."""

from __future__ import annotations

import pytest
import torch

from fedapp.task.models import MODELS, ImageSpec, build_model
from fedapp.task.split import DEFAULT_CUTS, build_split, layer_chain, split_model

MNIST = ImageSpec(1, 28, 28, 10)
CIFAR = ImageSpec(3, 32, 32, 10)
TINY_RGB = ImageSpec(3, 8, 8, 10)  # keeps the deep ResNets' exactness check fast on CPU


def spec_for(name: str) -> ImageSpec:
    return CIFAR if name.startswith("resnet") else MNIST


def randomise_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics, so eval-mode BN is not the identity."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_front_then_back_is_the_unsplit_model_exactly(name: str) -> None:
    spec = TINY_RGB if name.startswith("resnet") else MNIST
    gen = torch.Generator().manual_seed(0)
    model = build_model(name, spec, seed=1)
    randomise_bn(model, gen)
    model.eval()
    x = torch.rand(3, spec.channels, spec.height, spec.width, generator=gen)  # (B, C, H, W)
    with torch.no_grad():
        expected = model(x)
        cuts = sorted({1, 0, len(layer_chain(model)) - 1})
        for cut in cuts:
            parts = split_model(model, name, spec, cut)
            assert torch.equal(parts.predict(x), expected), (name, cut)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_front_and_back_state_dicts_partition_the_model(name: str) -> None:
    spec = spec_for(name)
    model = build_model(name, spec, seed=1)
    parts = split_model(model, name, spec)
    front, back = set(parts.front.state_dict()), set(parts.back.state_dict())
    assert front and back and not front & back
    assert front | back == set(model.state_dict())
    assert not set(parts.aux.state_dict()) & set(model.state_dict())


def test_resnet18_imagenet_default_cut_is_the_papers_stem() -> None:
    # docs/strategies/heron-sfl.md (Hyperparameters): conv7x7 s2 (3->64), BN, ReLU, maxpool,
    # conv3x3 64->64, BN, ReLU:
    # 46,528 parameters and a 64x8x8 output on 32x32 inputs; aux = Linear(4096 -> C)
    parts = build_split("resnet18-imagenet", CIFAR)
    assert parts.cut == DEFAULT_CUTS["resnet18-imagenet"] == 7
    assert sum(p.numel() for p in parts.front.parameters()) == 46_528
    assert parts.cut_shape == (64, 8, 8)
    assert sum(p.numel() for p in parts.aux.parameters()) == 4096 * 10 + 10
    n_conv = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
                 for m in build_model("resnet18-imagenet", CIFAR).modules())
    assert n_conv == 17  # plus the linear head: 18 weighted layers


def test_resnet18_cifar_cut_is_the_cut_that_matches_the_papers_flops() -> None:
    # docs/strategies/heron-sfl.md (Settings and reference numbers) [INFERRED]: CIFAR stem, cut after layer1[0].bn1, 64x32x32, aux = one Linear;
    # one forward of front + aux at B = 256 is ≈ 20.5 GFLOPs, so ZO (2 forwards) ≈ 41.1
    # and FO (forward + backward without the input gradient) ≈ 60.8 (paper: 39.90 / 59.85)
    from torch.utils.flop_counter import FlopCounterMode

    parts = build_split("resnet18-cifar-cut", CIFAR)
    assert parts.cut == DEFAULT_CUTS["resnet18-cifar-cut"] == 5
    assert parts.cut_shape == (64, 32, 32)
    assert isinstance(parts.front.chain[-1], torch.nn.BatchNorm2d)
    assert sum(p.numel() for p in parts.front.parameters()) == 3 * 64 * 9 + 64 * 64 * 9 + 4 * 64
    assert sum(p.numel() for p in parts.aux.parameters()) == 65_536 * 10 + 10
    full = build_model("resnet18-cifar-cut", CIFAR)
    assert sum(p.numel() for p in full.parameters()) == sum(
        p.numel() for p in build_model("resnet18", CIFAR).parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        parts.aux(parts.front(torch.zeros(256, 3, 32, 32)))
    assert abs(2 * counter.get_total_flops() / 1e9 - 41.1) < 0.2


def test_fedgen_cnn_is_cut_after_its_convolutions() -> None:
    parts = build_split("fedgen-cnn", MNIST, aux_pool="avg")
    assert parts.cut_shape == (16, 7, 7)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in parts.back.modules())
    assert sum(p.numel() for p in parts.aux.parameters()) == 16 * 10 + 10


def test_aux_head_initialisation_is_seeded() -> None:
    a = build_split("fedgen-cnn", MNIST, seed=3, aux_seed=5).aux.state_dict()
    b = build_split("fedgen-cnn", MNIST, seed=3, aux_seed=5).aux.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_of_range_cut_is_rejected_with_the_allowed_range() -> None:
    with pytest.raises(ValueError, match=r"heron.cut-layer = 99 .* 1\.\.8"):
        build_split("fedgen-cnn", MNIST, cut=99)
