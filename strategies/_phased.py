"""Base of strategies that drive their own round loop (FedZGE, HERON-SFL, FedVTC).

Flower's ``Strategy.start`` is train-then-evaluate; multi-phase protocols
(queries, distillation, split hops, statistics) need several round trips per
round. :class:`PhasedStrategy` keeps Flower's ``start()`` signature (so the
ServerApp drives every strategy alike, through ``evaluate_fn``) and offers the
shared plumbing: bounded waiting for nodes, seeded sampling, and :meth:`_send`,
which counts bytes both ways, logs and counts error and missing replies, and
screens every reply before a phase sees it. Subclasses implement
:meth:`run_round` as one named method per phase of their paper.
"""

from __future__ import annotations

import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedapp.wire.common import content_bytes
from strategies.screened import Accounting

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
Check = Callable[[RecordDict], str | None]


class NotEnoughNodes(RuntimeError):
    """Fewer nodes connected than ``min_available_nodes`` within the wait limit."""


class PhasedStrategy(Accounting, Strategy):
    """A strategy whose ``start()`` runs :meth:`run_round` for every round.

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
        self.timeout = 3600.0

    # -- the round loop -------------------------------------------------------------------

    @abstractmethod
    def run_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """One round of the protocol; returns the arrays the server evaluates afterwards."""

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Evaluate the initial arrays, then run and evaluate rounds ``start_round..num_rounds``."""
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        self.timeout = timeout
        result = Result(arrays=initial_arrays)
        if (
            evaluate_fn is not None
            and not self.resuming
            and (res := evaluate_fn(0, initial_arrays)) is not None
        ):
            result.evaluate_metrics_serverapp[0] = res
        for server_round in self.rounds(num_rounds):
            log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
            result.arrays = self.run_round(grid, server_round, result.arrays)
            if evaluate_fn is not None and (res := evaluate_fn(server_round, result.arrays)):
                result.evaluate_metrics_serverapp[server_round] = res
        return result

    # -- plumbing shared by the phases ------------------------------------------------------

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

    def _send(
        self,
        grid: Grid,
        server_round: int,
        message_type: str,
        contents: Mapping[int, RecordDict],
        check: Check | None = None,
    ) -> dict[int, RecordDict]:
        """Send ``contents[node]`` to every node; return the sound replies by node id.

        Bytes are counted from the records actually sent and received. Error
        replies and replies that never came are logged and counted in
        ``failed``; replies that fail ``check`` are logged and counted in
        ``rejected``. The caller only ever sees replies that passed.
        """
        messages = [
            grid.create_message(content, message_type, node, str(server_round))
            for node, content in contents.items()
        ]
        self.ledger.bytes_down += sum(content_bytes(m.content) for m in messages)
        t0 = time.perf_counter()
        replies: Iterable[Message] = grid.send_and_receive(messages, timeout=self.timeout)
        replies = list(replies)
        self.ledger.train_phase_s += time.perf_counter() - t0
        self.ledger.failed += len(messages) - len(replies)
        accepted: dict[int, RecordDict] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.ledger.failed += 1
                log(WARNING, "%s: node %d replied with an error: %s", message_type, node,
                    msg.error.reason)
                continue
            self.ledger.bytes_up += content_bytes(msg.content)
            reason = check(msg.content) if check is not None else None
            if reason is not None:
                self._reject(msg, reason)
                continue
            accepted[node] = msg.content
        return accepted

    # -- Flower's abstract hooks: unused, the loop is start() -------------------------------

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
