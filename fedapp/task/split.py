"""HERON-SFL's model split: client front-end, client auxiliary head, server back-end.

Paper: Kou, Chen, Yang, Shen, "Lean Clients, Full Accuracy: Hybrid Zeroth- and
First-Order Split Federated Learning", arXiv 2601.09076 (v1), §III-B and §IV
(docs/strategies/heron-sfl.md). CSE-FSL (Mu and Shen, 2023) uses the same three parts.

Any model of the zoo is a chain of layers (``feature_net`` then ``head``, with
nested ``nn.Sequential`` flattened), so it can be cut after any layer:

- the **front-end** θ_c is the first ``cut`` layers, run on the client;
- the **auxiliary head** θ_a maps the cut activations to logits, so the client
  has a local loss (training only, never used for inference);
- the **back-end** θ_s is the rest, trained first-order on the server.

Front and back keep the full model's parameter names, so their state dicts are
disjoint and their union is the full model's state dict: the server evaluates
``front + back`` with the unsplit model (docs/strategies/heron-sfl.md (Round structure and wire) step 5).

Default cuts (``heron.cut-layer = 0``): ``resnet18-imagenet`` after the stem of
docs/strategies/heron-sfl.md (Hyperparameters) (conv7x7 s2, BN, ReLU, max-pool, conv3x3, BN, ReLU: 64x8x8 on 32x32
inputs); ``resnet18-cifar-cut`` after ``layer1[0].bn1`` of the CIFAR-stem
ResNet-18 (64x32x32, the cut that matches the paper's FLOPs, docs/strategies/heron-sfl.md (Settings and reference numbers));
``fedgen-cnn`` and ``cnn`` after their convolutions; the CIFAR-style ResNets
after their 3x3 stem; ``mlp`` after its hidden layer; any other model halfway
through its layer chain.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedapp.task.models import ImageSpec, SplitModel, build_model

AuxPool = Literal["flatten", "avg"]

#: Layers in the front-end when ``heron.cut-layer = 0``, by model name.
DEFAULT_CUTS: dict[str, int] = {
    "resnet18-imagenet": 7,  # conv7x7, BN, ReLU, max-pool, conv3x3, BN, ReLU
    "resnet18-cifar-cut": 5,  # conv3x3, BN, ReLU, layer1[0].conv1, layer1[0].bn1
    "fedgen-cnn": 6,  # conv, BN, ReLU, conv, BN, ReLU: (16, H/4, W/4)
    "fedgen-cnn-gn": 6,  # the same with GroupNorm
    "cnn": 6,  # conv, ReLU, pool, conv, ReLU, pool: (64, H/4, W/4)
    "mlp": 3,  # flatten, linear, ReLU
    "resnet18": 3,  # 3x3 stem: conv, BN, ReLU
    "resnet34": 3,
    "resnet50": 3,
}


def layer_chain(model: SplitModel) -> list[tuple[str, nn.Module]]:
    """The model as ``(qualified name, layer)`` pairs; running them in order is ``model(x)``.

    ``nn.Sequential`` containers are flattened; any other module (a residual
    block) is one layer.
    """

    def flat(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                yield from flat(f"{prefix}.{name}", child)
        else:
            yield prefix, module

    return [*flat("feature_net", model.feature_net), *flat("head", model.head)]


class Part(nn.Module):
    """Consecutive layers of a model that keep the model's parameter names.

    The layers are registered under their original dotted paths (empty
    containers stand in for the parents), so ``state_dict()`` keys are the full
    model's keys for these layers; ``forward`` runs them in chain order.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.chain: list[nn.Module] = []  # plain list: registered once, below, by path
        for name, module in layers:
            *path, leaf = name.split(".")
            parent: nn.Module = self
            for step in path:
                child = parent._modules.get(step)
                if child is None:
                    child = nn.Module()
                    parent.add_module(step, child)
                parent = child
            parent.add_module(leaf, module)
            self.chain.append(module)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.chain:
            x = layer(x)
        return x


@dataclass(frozen=True)
class SplitParts:
    """A model cut in three: θ_c (``front``), θ_a (``aux``), θ_s (``back``)."""

    front: Part
    aux: nn.Module
    back: Part
    cut: int  # layers in the front-end
    cut_shape: tuple[int, ...]  # one sample's cut activations, e.g. (64, 8, 8)

    def predict(self, x: Tensor) -> Tensor:
        """Inference: back(front(x)), (B, C, H, W) -> (B, num_classes)."""
        return self.back(self.front(x))

    def local(self) -> nn.ModuleList:
        """θ_l = {θ_c, θ_a} as one module (for BN handling and parameter order)."""
        return nn.ModuleList([self.front, self.aux])


def aux_head(cut_shape: tuple[int, ...], num_classes: int, pool: AuxPool) -> nn.Sequential:
    """The client's auxiliary classifier: one linear layer on the cut activations.

    ``flatten``: Linear(prod(cut_shape) -> C), docs/strategies/heron-sfl.md (Hyperparameters)'s default (4096 -> C for
    the ResNet-18 cut). ``avg``: global average pool first, Linear(channels -> C);
    activations without spatial dims are flattened either way.
    """
    if pool == "avg" and len(cut_shape) == 3:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cut_shape[0], num_classes)
        )
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(cut_shape), num_classes))


def resolve_cut(name: str, num_layers: int, cut: int) -> int:
    """``cut`` layers in the front (0: the model's default); must leave both sides non-empty."""
    chosen = cut or DEFAULT_CUTS.get(name, num_layers // 2)
    if not 1 <= chosen < num_layers:
        raise ValueError(
            f"heron.cut-layer = {cut} for {name!r}: the front needs 1..{num_layers - 1} "
            f"of its {num_layers} layers (0 picks the default)"
        )
    return chosen


def split_model(
    model: SplitModel, name: str, spec: ImageSpec, cut: int = 0, aux_pool: AuxPool = "flatten",
    aux_seed: int | None = None,
) -> SplitParts:
    """Cut ``model`` (built as ``name`` for ``spec``) after ``cut`` layers; add an aux head.

    The parts share the model's modules (no copy). ``aux_seed`` makes the aux
    head's initialisation reproducible.
    """
    chain = layer_chain(model)
    k = resolve_cut(name, len(chain), cut)
    front, back = Part(chain[:k]), Part(chain[k:])
    front.eval()
    with torch.no_grad():
        cut_shape = tuple(front(torch.zeros(1, spec.channels, spec.height, spec.width)).shape[1:])
    front.train(model.training)
    back.train(model.training)
    if aux_seed is None:
        aux = aux_head(cut_shape, spec.num_classes, aux_pool)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(aux_seed)
            aux = aux_head(cut_shape, spec.num_classes, aux_pool)
    return SplitParts(front, aux, back, k, cut_shape)


def build_split(
    name: str, spec: ImageSpec, cut: int = 0, aux_pool: AuxPool = "flatten",
    seed: int | None = None, aux_seed: int | None = None,
) -> SplitParts:
    """:func:`build_model` then :func:`split_model`."""
    return split_model(build_model(name, spec, seed), name, spec, cut, aux_pool, aux_seed)


def aux_loss(parts: SplitParts, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """f_l = CE(a(c(x; θ_c); θ_a), y) (docs/strategies/heron-sfl.md (Losses and estimator)); returns (loss, cut activations (B, *cut))."""
    h = parts.front(x)
    return F.cross_entropy(parts.aux(h), y), h


def back_end_step(
    back: nn.Module, optimizer: torch.optim.Optimizer, acts: Tensor, labels: Tensor
) -> float:
    """One first-order server step θ_s ← θ_s − η_s ∇ℓ(s(c_i(x); θ_s), y) on detached acts.

    ``acts`` (B, *cut), ``labels`` (B,). Returns the loss before the step.
    """
    back.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(back(acts), labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def uniform_average(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """θ = (1/N) Σ_i θ_i, key by key (docs/strategies/heron-sfl.md (Round structure and wire) step 4: uniform, not sample-weighted).

    Integer buffers (BatchNorm's ``num_batches_tracked``) are averaged and rounded.
    """
    out = {}
    for key, first in states[0].items():
        stacked = torch.stack([s[key].to(torch.float64) for s in states])  # (N, *shape)
        mean = stacked.mean(0)
        out[key] = (mean.round() if not first.is_floating_point() else mean).to(first.dtype)
    return out
