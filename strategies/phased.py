"""Base of strategies with several round trips per round (FedZGE, HERON-SFL, FedVTC).

Flower's ``Strategy`` hooks are train-then-evaluate; multi-phase protocols
(queries, distillation, split hops, statistics) implement
:meth:`~strategies.base.FedzgStrategy.run_round` as one named method per phase of
their paper and send each phase with :meth:`~strategies.base.FedzgStrategy._send`.
:class:`PhasedStrategy` adds bounded waiting for nodes and seeded sampling, and
fills Flower's abstract hooks, which the shared loop never calls for these.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid

from strategies.base import FedzgStrategy


class NotEnoughNodes(RuntimeError):
    """Fewer nodes connected than ``min_available_nodes`` within the wait limit."""


class PhasedStrategy(FedzgStrategy):
    """A strategy whose rounds are its own sequence of phases.

    Parameters
    ----------
    fraction_train : float
        Share of connected nodes sampled each round (at least one).
    min_available_nodes : int
        Nodes that must be connected before a round starts.
    node_wait : float
        Seconds to wait for ``min_available_nodes`` before failing with
        :class:`NotEnoughNodes`.
    """

    def __init__(
        self, fraction_train: float, min_available_nodes: int, node_wait: float = 600.0
    ) -> None:
        super().__init__()
        self.fraction_train = fraction_train
        self.min_available_nodes = min_available_nodes
        self.node_wait = node_wait

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.node_wait
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.min_available_nodes:
                return nodes
            if time.monotonic() >= deadline:
                raise NotEnoughNodes(
                    f"only {len(nodes)} of server.min-available-nodes = "
                    f"{self.min_available_nodes} nodes connected within {self.node_wait:.0f} s"
                )
            time.sleep(1.0)

    def _sample(self, grid: Grid) -> list[int]:
        """Wait for enough nodes, then sample ``fraction_train`` of them (seeded ``random``)."""
        nodes = self._wait_for_nodes(grid)
        k = max(1, int(round(self.fraction_train * len(nodes))))
        return sorted(random.sample(nodes, k))

    # -- Flower's abstract hooks: unused, the phases build and aggregate their own messages ----

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Unused: phases build their own messages in :meth:`run_round`."""
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Unused: phases aggregate inside :meth:`run_round`."""
        return None, None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Unused: client-side evaluation, where a protocol has it, is a phase."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Unused: see :meth:`configure_evaluate`."""
        return None

    def summary(self) -> None:
        log(INFO, "\t├── fraction of nodes sampled per round: %.2f", self.fraction_train)
        log(INFO, "\t└── min available nodes: %d", self.min_available_nodes)
