"""Classifiers in plain torch, each split into ``features(x) -> z`` and ``head(z) -> logits``.

The split is what FedGen (latent generator on z), FedZGE and FedVTC (feature
statistics) build on. Every model adapts to the dataset's channels, image size
and number of classes through :class:`ImageSpec`, and exposes ``latent_dim``.

- ``fedgen-cnn``: the MNIST CNN of FedGen (Zhu, Hong, Zhou, ICML 2021,
  arXiv 2105.10056; official ``models.py``): two stride-2 3x3 convs with BN,
  a linear map to a 32-d latent, a linear head. 26,434 parameters on MNIST.
  It returns logits, not the official log-softmax (losses take logits here).
- ``cnn``: conv32-pool-conv64-pool-fc128 with a linear head (0.55 M on 32x32 RGB).
- ``mlp``: one hidden layer; for tiny tests and sanity runs.
- ``resnet18/34/50``: CIFAR-style ResNets (He et al., 2016) with a 3x3 stride-1
  stem and no max-pool, written here without torchvision.
- ``resnet18-imagenet``: ResNet-18 with the ImageNet stem (7x7 s2 conv, max-pool)
  arranged as HERON-SFL's client front (docs/strategies/heron-sfl.md (Hyperparameters), [INFERRED]): the first 3x3
  conv + BN + ReLU of stage 1 belongs to the stem, and the residual it skips
  starts at its output, so no skip connection crosses the default cut.
- ``resnet18-cifar-cut``: the CIFAR-stem ResNet-18 (3x3 s1 stem, no max-pool)
  arranged the same way for HERON-SFL's cut after ``layer1[0].bn1`` (cut output
  64x32x32 on 32x32 inputs), the stem that matches the paper's FLOPs
  (docs/strategies/heron-sfl.md (Settings and reference numbers), [INFERRED]).
- ``vtc-cnn-0.5/1/1.5/2``: FedVTC's heterogeneous zoo (docs/strategies/fedvtc.md (Our reading of the paper), our reading of
  Niu, Dong, Qin, arXiv 2508.01669): one CNN design at four channel multipliers,
  each projecting into the common latent space of size p = 64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """What a model needs to know about its inputs."""

    channels: int
    height: int
    width: int
    num_classes: int


class SplitModel(nn.Module):
    """``forward(x) = head(features(x))``; ``features`` ends at the latent z."""

    latent_dim: int
    feature_net: nn.Module
    head: nn.Module

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, latent_dim)."""
        return self.feature_net(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.head(self.features(x))


def _flat_dim(net: nn.Module, spec: ImageSpec) -> int:
    """Size of ``net``'s flattened output on one (C, H, W) input."""
    with torch.no_grad():
        was_training = net.training
        net.eval()
        out = net(torch.zeros(1, spec.channels, spec.height, spec.width))
        net.train(was_training)
    return int(out.flatten(1).shape[1])


class FedGenCNN(SplitModel):
    """FedGen's MNIST classifier (official ``models.py``, ``mnist`` config)."""

    def __init__(self, spec: ImageSpec, latent_dim: int = 32) -> None:
        super().__init__()
        conv = nn.Sequential(
            nn.Conv2d(spec.channels, 6, 3, stride=2, padding=1),  # (B, 6, H/2, W/2)
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 16, 3, stride=2, padding=1),  # (B, 16, H/4, W/4)
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Flatten(),  # MNIST: (B, 784)
        )
        self.feature_net = nn.Sequential(conv, nn.Linear(_flat_dim(conv, spec), latent_dim))
        self.head = nn.Linear(latent_dim, spec.num_classes)
        self.latent_dim = latent_dim


class SmallCNN(SplitModel):
    """conv32-pool-conv64-pool-fc128 (PLATFORM §7's 0.55 M-parameter CNN on 32x32 RGB)."""

    def __init__(self, spec: ImageSpec, latent_dim: int = 128) -> None:
        super().__init__()
        conv = nn.Sequential(
            nn.Conv2d(spec.channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
            nn.Flatten(),
        )
        self.feature_net = nn.Sequential(
            conv, nn.Linear(_flat_dim(conv, spec), latent_dim), nn.ReLU()
        )
        self.head = nn.Linear(latent_dim, spec.num_classes)
        self.latent_dim = latent_dim


class MLP(SplitModel):
    """Flatten, one hidden ReLU layer, linear head."""

    def __init__(self, spec: ImageSpec, latent_dim: int = 64) -> None:
        super().__init__()
        d_in = spec.channels * spec.height * spec.width
        self.feature_net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, latent_dim), nn.ReLU())
        self.head = nn.Linear(latent_dim, spec.num_classes)
        self.latent_dim = latent_dim


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(SplitModel):
    """CIFAR-style ResNet: 3x3 s1 stem, no max-pool, four stages, global average pool."""

    def __init__(
        self, spec: ImageSpec, block: type[BasicBlock] | type[Bottleneck], depths: list[int]
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(spec.channels, 64, 3, 1, 1, bias=False),  # (B, 64, H, W)
            nn.BatchNorm2d(64),
            nn.ReLU(),
        ]
        c_in = 64
        for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(block(c_in, width, stride))
                c_in = width * block.expansion
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, 512 or 2048)
        self.feature_net = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, spec.num_classes)
        self.latent_dim = c_in


def _finish_resnet18(model: SplitModel, front: list[nn.Module], spec: ImageSpec) -> None:
    """Append ResNet-18's stages 2-4, pool and head to a 64-wide ``front`` (the split variants)."""
    layers, c_in = list(front), 64
    for width in (128, 256, 512):
        layers += [BasicBlock(c_in, width, 2), BasicBlock(width, width, 1)]
        c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, 512)
    model.feature_net = nn.Sequential(*layers)
    model.head = nn.Linear(c_in, spec.num_classes)
    model.latent_dim = c_in


class HalfBlock(nn.Module):
    """The rest of ResNet-18's first basic block once its first conv moved into the stem.

    ``relu(bn(conv(h)) + h)``: the identity starts at the cut output h (docs/strategies/heron-sfl.md (Hyperparameters)).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + x)


class ResNet18ImageNet(SplitModel):
    """ResNet-18 with the ImageNet stem, cut-friendly for HERON-SFL (docs/strategies/heron-sfl.md (Hyperparameters)).

    Layers 0-6 are the paper's client front: conv7x7 s2 (3->64), BN, ReLU,
    max-pool 3 s2, conv3x3 64->64, BN, ReLU (46,528 parameters; 64x8x8 on
    32x32 inputs). Then :class:`HalfBlock`, one more 64-wide basic block,
    stages 2-4 of ResNet-18, global average pool and a linear head: still 17
    convolutions and one linear layer.
    """

    def __init__(self, spec: ImageSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(spec.channels, 64, 7, 2, 3, bias=False),  # (B, 64, H/2, W/2)
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),  # (B, 64, H/4, W/4)
            nn.Conv2d(64, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),  # the default cut: (B, 64, H/4, W/4)
            HalfBlock(64),
            BasicBlock(64, 64, 1),
        ]
        _finish_resnet18(self, layers, spec)


class ResNet18CifarCut(SplitModel):
    """CIFAR-stem ResNet-18 arranged for HERON-SFL's cut after ``layer1[0].bn1`` (docs/strategies/heron-sfl.md (Settings and reference numbers)).

    Layers 0-4 are the client front: conv3x3 s1 (3->64), BN, ReLU, then the
    first basic block's conv3x3 (64->64) and BN (``layer1[0].conv1``,
    ``layer1[0].bn1``); the cut output is 64xHxW (64x32x32 on CIFAR-10). Then the
    block's ReLU and :class:`HalfBlock` (its second conv and BN, the identity
    taken from the cut, as in :class:`ResNet18ImageNet`), one more 64-wide block,
    stages 2-4, global average pool and a linear head: the parameters and FLOPs
    of the CIFAR ``resnet18``. The stem is [INFERRED] from the paper's FLOPs
    (39.90 / 59.85 GFLOPs at B = 256): this cut gives about 41.1 / 60.8 by
    torch's counter, the ImageNet-stem cut 8-10x less.
    """

    def __init__(self, spec: ImageSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(spec.channels, 64, 3, 1, 1, bias=False),  # (B, 64, H, W)
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False),  # layer1[0].conv1
            nn.BatchNorm2d(64),  # layer1[0].bn1: the default cut, (B, 64, H, W)
            nn.ReLU(),
            HalfBlock(64),
            BasicBlock(64, 64, 1),
        ]
        _finish_resnet18(self, layers, spec)


class VTCCNN(SplitModel):
    """FedVTC zoo member: two conv blocks of width 16m and 32m, then a projection to p.

    g_k = backbone_k + Linear(· -> p) into the latent space every client shares
    (no ReLU after the projection: the latents are modelled as Gaussians).
    No BatchNorm: statistics, the KL term, the decoder's DM term and evaluation
    all read g_k(x), which must mean the same in training and evaluation mode
    (with BN, one local epoch leaves running statistics far from batch ones).
    h_k = Linear(p -> C). Parameters on MNIST at p = 64: m = 0.5 52 k, 1 106 k,
    1.5 162 k, 2 220 k.
    """

    def __init__(self, spec: ImageSpec, width: float, latent_dim: int = 64) -> None:
        super().__init__()
        c1, c2 = max(1, round(16 * width)), max(1, round(32 * width))
        conv = nn.Sequential(
            nn.Conv2d(spec.channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
            nn.Flatten(),
        )
        self.feature_net = nn.Sequential(conv, nn.Linear(_flat_dim(conv, spec), latent_dim))
        self.head = nn.Linear(latent_dim, spec.num_classes)
        self.latent_dim = latent_dim


#: FedVTC's default zoo: the channel multipliers of docs/strategies/fedvtc.md (Our reading of the paper).
VTC_ZOO = ("vtc-cnn-0.5", "vtc-cnn-1", "vtc-cnn-1.5", "vtc-cnn-2")

ModelFactory = Callable[[ImageSpec], SplitModel]

MODELS: dict[str, ModelFactory] = {
    "fedgen-cnn": FedGenCNN,
    "cnn": SmallCNN,
    "mlp": MLP,
    "resnet18": lambda spec: ResNet(spec, BasicBlock, [2, 2, 2, 2]),
    "resnet34": lambda spec: ResNet(spec, BasicBlock, [3, 4, 6, 3]),
    "resnet50": lambda spec: ResNet(spec, Bottleneck, [3, 4, 6, 3]),
    "resnet18-imagenet": ResNet18ImageNet,
    "resnet18-cifar-cut": ResNet18CifarCut,
    "vtc-cnn-0.5": lambda spec: VTCCNN(spec, 0.5),
    "vtc-cnn-1": lambda spec: VTCCNN(spec, 1.0),
    "vtc-cnn-1.5": lambda spec: VTCCNN(spec, 1.5),
    "vtc-cnn-2": lambda spec: VTCCNN(spec, 2.0),
}


def group_norm_variant(factory: ModelFactory) -> ModelFactory:
    """``factory`` with every BatchNorm2d(c) replaced by GroupNorm(gcd(c, 8), c).

    A BN-free global model for FedZGE (docs/strategies/fedzge.md (Generator loss and ZO estimator)): a model trained only on synthetic
    images carries no BatchNorm statistics that fit real test data, while GroupNorm
    normalises every image by itself, identically in training and evaluation. The
    other weights are initialised exactly as the BatchNorm model's (GroupNorm, like
    BatchNorm, starts at weight 1 and bias 0). fedgen-cnn: 6 channels -> 2 groups,
    16 -> 8; ResNet widths -> 8 groups.
    """

    def build(spec: ImageSpec) -> SplitModel:
        model = factory(spec)
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    c = child.num_features
                    setattr(parent, name, nn.GroupNorm(math.gcd(c, 8), c))
        return model

    return build


#: GroupNorm variants (``<name>-gn``) of the zoo's BatchNorm models, for BN-free global models.
MODELS |= {f"{name}-gn": group_norm_variant(MODELS[name]) for name in ("fedgen-cnn", "resnet18")}


def build_model(name: str, spec: ImageSpec, seed: int | None = None) -> SplitModel:
    """Build model ``name`` for ``spec``; with ``seed`` the initialisation is reproducible."""
    if seed is None:
        return MODELS[name](spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](spec)
