"""The server side: every strategy's card in one registry, :data:`STRATEGIES`.

Adding a strategy is its own module (the strategy class and its
:class:`~strategies.card.StrategyCard`) plus one line here; see docs/extending.md.
"""

from __future__ import annotations

from fedapp.config import AppConfig
from strategies import fedavg, fedgen, fedvtc, fedzge, heron, zo_seed
from strategies.base import FedzgStrategy
from strategies.card import StrategyCard, check

STRATEGIES: dict[str, StrategyCard] = {
    card.name: card
    for card in (
        fedavg.FEDAVG,
        fedavg.FEDPROX,
        zo_seed.CARD,
        fedgen.CARD,
        heron.CARD,
        fedzge.CARD,
        fedvtc.CARD,
    )
}


def card_for(cfg: AppConfig) -> StrategyCard:
    """``cfg.strategy``'s card, once ``cfg`` passed its checks (:class:`ConfigError` otherwise)."""
    card = STRATEGIES[cfg.strategy]
    check(cfg, card, [c.name for c in STRATEGIES.values() if c.heterogeneous])
    return card


def build_strategy(cfg: AppConfig) -> FedzgStrategy:
    """The strategy named by ``cfg.strategy``, after its card's checks."""
    return card_for(cfg).build(cfg)


__all__ = ["STRATEGIES", "FedzgStrategy", "StrategyCard", "build_strategy", "card_for"]
