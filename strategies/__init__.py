"""Server strategies, built by name through the :data:`STRATEGIES` registry."""

from __future__ import annotations

from collections.abc import Callable

from fedapp.config import AppConfig
from strategies.fedavg import build_fedavg, build_fedprox
from strategies.fedgen import build_fedgen
from strategies.fedvtc import FedVTC
from strategies.fedzge import FedZGE
from strategies.heron import HeronSFL
from strategies.screened import Accounting, RoundLedger, Screened
from strategies.zo_seed import ZOSeed

StrategyFactory = Callable[[AppConfig], Accounting]

STRATEGIES: dict[str, StrategyFactory] = {
    "fedavg": build_fedavg,
    "fedprox": build_fedprox,
    "zo-seed": ZOSeed.from_config,
    "fedgen": build_fedgen,
    "heron-sfl": HeronSFL.from_config,
    "fedzge": FedZGE.from_config,
    "fedvtc": FedVTC.from_config,
}


def build_strategy(cfg: AppConfig) -> Accounting:
    """The strategy named by ``cfg.strategy`` (the schema's Literal guarantees the key)."""
    return STRATEGIES[cfg.strategy](cfg)


__all__ = ["STRATEGIES", "Accounting", "RoundLedger", "Screened", "build_strategy"]
