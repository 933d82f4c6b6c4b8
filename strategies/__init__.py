"""Server strategies, built by name through the :data:`STRATEGIES` registry."""

from __future__ import annotations

from collections.abc import Callable

from fedapp.config import AppConfig
from strategies.fedavg import build_fedavg, build_fedprox
from strategies.fedgen import build_fedgen
from strategies.screened import RoundLedger, Screened

StrategyFactory = Callable[[AppConfig], Screened]

STRATEGIES: dict[str, StrategyFactory] = {
    "fedavg": build_fedavg,
    "fedprox": build_fedprox,
    "fedgen": build_fedgen,
}


def build_strategy(cfg: AppConfig) -> Screened:
    """The strategy named by ``cfg.strategy`` (the schema's Literal guarantees the key)."""
    return STRATEGIES[cfg.strategy](cfg)


__all__ = ["STRATEGIES", "RoundLedger", "Screened", "build_strategy"]
