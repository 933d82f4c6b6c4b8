"""BatchNorm modes: batch statistics without side effects, and statistics re-estimation.

A BatchNorm layer in ``train()`` mode normalises each batch by that batch's own
mean and variance and, as a side effect, moves its running statistics towards
them; in ``eval()`` mode it normalises by the running statistics. FedZGE's
official code (maxinge8698/FedZGE @ 2075064) never switches its clients out of
train mode, so their logit answers use the statistics of each query batch
(``node/client.py`` ``compute_logits``); fedzg evaluates clients in eval mode, so
it must answer that way *without* letting the synthetic batches overwrite the
running statistics learnt on real data (docs/strategies/fedzge.md (Generator loss and ZO estimator), answering mode).

Plain torch, no Flower.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from fedapp.task.data import Arrays, batches


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``model`` (1d, 2d, 3d), in module order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: ``model`` in eval mode except its BatchNorm layers, which normalise by
    the statistics of the batch at hand and leave their running statistics (and
    ``num_batches_tracked``) untouched; outside: every module's mode as before.

    torch's BatchNorm uses batch statistics when ``training`` is set and updates its
    buffers only when ``track_running_stats`` is set too, so clearing the latter for
    the duration gives "train-mode" normalisation with no side effect. Dropout and
    any other mode-dependent layer stay in eval mode (deterministic answers).
    """
    modes = {m: m.training for m in model.modules()}
    layers = batchnorm_layers(model)
    tracking = [m.track_running_stats for m in layers]
    model.eval()
    for m in layers:
        m.train()
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m, track in zip(layers, tracking, strict=True):
            m.track_running_stats = track
        for m, mode in modes.items():
            m.training = mode


@torch.no_grad()
def reestimate_running_stats(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace every BatchNorm layer's running statistics by their exact average over
    ``batches`` (cumulative, ``momentum = None``), computed with the current weights.

    ``batches``: tensors (B, *x) on the model's device. Returns how many batches were
    seen; with none, the statistics are left as they were. Restores the layers'
    momentum and every module's mode.
    """
    layers = batchnorm_layers(model)
    batches = list(batches)
    if not layers or not batches:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches
        m.train()
    try:
        for b in batches:
            model(b)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return len(batches)


@torch.no_grad()
def transductive_accuracy(
    model: nn.Module, data: Arrays, batch_size: int, device: torch.device
) -> float:
    """Top-1 accuracy with every BatchNorm layer normalising by the statistics of the
    *test* batch it is given, as the official code tests (``node/server.py``
    ``global_model_update``: the model is left in train mode for its test loop).

    A labelled diagnostic, never a headline or a selection criterion: the prediction
    for one test image depends on the other images of its batch (transductive). Unlike
    the official loop, the running statistics are not touched. Models without
    BatchNorm get their ordinary accuracy.
    """
    if len(data) == 0:
        return float("nan")
    model.to(device)
    correct = 0
    with batch_statistics(model):
        for x, y in batches(data, batch_size, device):
            correct += int((model(x).argmax(1) == y).sum())  # x (B, *img) -> logits (B, C)
    return correct / len(data)
