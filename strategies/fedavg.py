"""FedAvg and FedProx: Flower's own strategies, configured, screened and metered.

FedAvg: McMahan et al., AISTATS 2017, arXiv 1602.05629.
FedProx: Li et al., MLSys 2020, arXiv 1812.06127. Flower's ``FedProx`` sends
``proximal-mu`` in the train config; our first-order client adds
``mu/2 * ||w - w_global||^2`` to its loss (:mod:`clients.fo`).
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg, FedProx

from fedapp.config import AppConfig
from strategies.screened import Screened


class ScreenedFedAvg(Screened, FedAvg):
    """Flower's FedAvg behind reply screening and byte accounting."""


class ScreenedFedProx(Screened, FedProx):
    """Flower's FedProx behind reply screening and byte accounting."""


def common_kwargs(cfg: AppConfig) -> dict[str, Any]:
    """Sampling settings shared by every FedAvg-derived strategy."""
    return {
        "fraction_train": cfg.server.fraction_train,
        "fraction_evaluate": cfg.server.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.server.min_available_nodes,
    }


def build_fedavg(cfg: AppConfig) -> ScreenedFedAvg:
    return ScreenedFedAvg(**common_kwargs(cfg))


def build_fedprox(cfg: AppConfig) -> ScreenedFedProx:
    return ScreenedFedProx(**common_kwargs(cfg), proximal_mu=cfg.fedprox.mu)
