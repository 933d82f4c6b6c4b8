"""The client side: trainers, chosen per node through the one :data:`TRAINERS` registry.

Each trainer is registered once with what it can train: a whole model
(:class:`~clients.base.Trainer`, for the weights, zo-seed, FedZGE and FedVTC
protocols) or the client parts of a split model (:class:`~clients.split.SplitTrainer`,
for HERON-SFL / CSE-FSL). Protocol handlers (:mod:`clients.handlers`) ask for the
kind they need and get a one-line error naming the trainer otherwise. Nothing in
this package outside :mod:`clients.handlers` imports Flower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clients.base import Trainer
from clients.fo import FirstOrderTrainer
from clients.split import SplitFirstOrderTrainer, SplitTrainer, SplitZerothOrderTrainer
from clients.zo import ZerothOrderTrainer


@dataclass(frozen=True, slots=True)
class TrainerCard:
    """A registered trainer: how to build it for a whole model, for split parts, or both."""

    whole: Callable[[], Trainer] | None = None
    split: Callable[[], SplitTrainer] | None = None


TRAINERS: dict[str, TrainerCard] = {
    "fo": TrainerCard(whole=FirstOrderTrainer),
    "zo": TrainerCard(whole=ZerothOrderTrainer),
    "split-zo": TrainerCard(split=SplitZerothOrderTrainer),
    "split-fo": TrainerCard(split=SplitFirstOrderTrainer),
}


def whole_trainer(name: str, protocol: str) -> Trainer:
    """The trainer registered as ``name``, for ``protocol``'s whole-model updates."""
    card = TRAINERS[name]
    if card.whole is None:
        raise ValueError(f"trainer {name!r} does not train a whole model ({protocol} needs one)")
    return card.whole()


def split_trainer(name: str) -> SplitTrainer:
    """The split trainer registered as ``name`` (``split-zo``, ``split-fo``)."""
    card = TRAINERS[name]
    if card.split is None:
        raise ValueError(f"trainer {name!r} does not train split models (train.split)")
    return card.split()


__all__ = ["TRAINERS", "TrainerCard", "split_trainer", "whole_trainer"]
