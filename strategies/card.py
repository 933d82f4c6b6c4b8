"""A strategy's card: what it is, in one frozen record the registry and the ServerApp read.

Each strategy module declares its :class:`StrategyCard`; :mod:`strategies` lists
them. The card replaces per-strategy branches elsewhere: the ServerApp checks the
validated config against it (:func:`check`) before anything runs, builds the
strategy with it, and tells the recorder whether there is a global model to
evaluate and which round the run reports. Its recommended settings (default
trainer, client models, learning rates...) are data, ``fedapp/cards/<name>.toml``,
which :mod:`fedapp.defaults` lays under the user's keys on the server and on the
clients alike (docs/architecture.md (Decisions)); the card reads them back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedapp.config import AppConfig, ConfigError
from fedapp.defaults import card_values, pyproject_defaults
from strategies.base import FedzgStrategy

#: A strategy-specific rule on the validated config: the problem in one line, or ``None``.
ConfigCheck = Callable[[AppConfig], str | None]


def final_round(cfg: AppConfig) -> str:
    """The default selection rule: the run reports its last round."""
    return "final"


@dataclass(frozen=True, slots=True)
class StrategyCard:
    """What the registry knows about one strategy."""

    name: str  # the run-config value of ``strategy``
    build: Callable[[AppConfig], FedzgStrategy]
    trainers: frozenset[str]  # accepted ``client.trainer`` values (``mixed`` included)
    heterogeneous: bool = False  # clients may run architectures of their own
    global_model: bool = True  # False: clients report the accuracy (no server evaluation)
    select: Callable[[AppConfig], str] = final_round  # the round the run reports
    checks: tuple[ConfigCheck, ...] = ()  # strategy-specific config rules

    @property
    def recommended(self) -> dict[str, object]:
        """The flat run-config values a run of this strategy takes for keys the user did not set."""
        return card_values(self.name)

    @property
    def default_trainer(self) -> str:
        """``client.trainer`` when the user does not set it."""
        trainer = self.recommended.get("client.trainer", pyproject_defaults()["client.trainer"])
        return str(trainer)

    @property
    def client_models(self) -> tuple[str, ...]:
        """The default ``model.clients`` zoo (heterogeneous strategies only)."""
        text = str(self.recommended.get("model.clients", ""))
        return tuple(m.strip() for m in text.split(",") if m.strip())


def check(cfg: AppConfig, card: StrategyCard, heterogeneous: list[str]) -> None:
    """Raise :class:`ConfigError` (one line) if ``cfg`` asks ``card`` for what it cannot do.

    ``heterogeneous`` names every strategy that accepts ``model.clients``, for the message.
    """
    problem: str | None = None
    if cfg.client.trainer not in card.trainers:
        problem = (f"strategy {card.name!r} cannot use client.trainer {cfg.client.trainer!r} "
                   f"(allowed: {', '.join(sorted(card.trainers))})")
    elif cfg.model.clients and not card.heterogeneous:
        problem = (f"model.clients = {cfg.model.clients!r} gives clients their own "
                   f"architectures, which strategy {card.name!r} cannot aggregate (allowed with: "
                   f"{', '.join(sorted(heterogeneous))})")
    else:
        problem = next((p for c in card.checks if (p := c(cfg)) is not None), None)
    if problem is not None:
        raise ConfigError(f"invalid run config: {problem}")
