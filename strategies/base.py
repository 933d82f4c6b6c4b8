"""The one base of every strategy: the round loop, send/screen/count, round reports, resume.

Every strategy, whether it extends Flower's FedAvg (:mod:`strategies.fedavg`) or
drives its own phases (:mod:`strategies.phased`), inherits :class:`FedzgStrategy`:

- :meth:`FedzgStrategy.start` keeps Flower's ``Strategy.start`` signature and runs
  :meth:`~FedzgStrategy.run_round` for rounds ``start_round..num_rounds`` with their
  true numbers, so a resumed run needs no round offset anywhere;
- after each round (and for the initial model, unless resuming) it closes the
  round's :class:`~fedapp.ledger.RoundLedger` and hands a
  :class:`~fedapp.ledger.RoundReport` to ``on_round``: bookkeeping flows one way;
- :meth:`~FedzgStrategy._screen` checks every reply against the wire contract
  (:mod:`fedapp.wire`) before anything aggregates it: NaN/Inf, wrong keys, shapes
  or dtypes are logged, counted and dropped, and the round goes on with the rest;
  bytes are counted from the records actually sent and received.

Resume contract (``resume = true``; :mod:`fedapp.checkpoint`): :meth:`state_dict`
is saved with every round's report, and :meth:`resume` restores it, with the
label counts seen so far and the first round still to run.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedapp.ledger import OnRound, RoundLedger, RoundReport
from fedapp.wire.common import content_bytes, decode_client_info

#: Why a reply must not be used, or ``None`` when it is sound.
Check = Callable[[RecordDict], str | None]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class FedzgStrategy(Strategy):
    """Round loop, accounting and reporting shared by every strategy.

    Cooperative: it sits before Flower's strategy in the MRO
    (``class FedGen(FedAvgRounds, FedAvg)``) and passes constructor arguments on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = RoundLedger()
        self.label_counts: dict[int, list[int]] = {}
        self.rejected_total = 0
        self.partitions: dict[int, int] = {}  # node id -> partition id, from client-info
        self.start_round = 1  # first round to run; > 1 when resuming from a checkpoint
        self.timeout = 3600.0
        self._train_config, self._evaluate_config = ConfigRecord(), ConfigRecord()

    # -- state for checkpoints and resume -----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Strategy state saved with every round (generators, optimisers, histories)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; stateless strategies ignore it."""

    def journal(self) -> list[dict[str, Any]]:
        """Append-only state of the round just finished (each entry with its ``round``).

        The recorder appends it to ``journal.jsonl`` instead of the checkpoint, so state
        that grows with the rounds (zo-seed's history) costs the same to save every round.
        """
        return []

    def load_journal(self, entries: list[dict[str, Any]]) -> None:
        """Restore the :meth:`journal` entries up to the checkpoint's round (before its state)."""

    def resume(
        self, state: dict[str, Any], label_counts: Mapping[int, list[int]], next_round: int,
        journal: list[dict[str, Any]] | None = None,
    ) -> None:
        """Continue a run from a checkpoint: journal, state, clients seen, first round to run."""
        self.load_journal(list(journal or []))
        self.load_state_dict(state)
        self.label_counts = dict(label_counts)
        self.start_round = next_round

    @property
    def resuming(self) -> bool:
        return self.start_round > 1

    # -- the round loop -------------------------------------------------------------------------

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
        on_round: OnRound | None = None,
    ) -> Result:
        """Report the initial arrays, then run and report rounds ``start_round..num_rounds``.

        ``on_round`` receives each round's :class:`~fedapp.ledger.RoundReport`;
        ``evaluate_fn`` (Flower's hook) receives the round's arrays, when given.
        """
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        self.timeout = timeout
        self._train_config = ConfigRecord() if train_config is None else train_config
        self._evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result(arrays=initial_arrays)
        if not self.resuming:
            self._report(result, 0, initial_arrays, evaluate_fn, on_round)
        for server_round in range(self.start_round, num_rounds + 1):
            log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
            result.arrays = self.run_round(grid, server_round, result.arrays)
            self._report(result, server_round, result.arrays, evaluate_fn, on_round)
        return result

    def _report(
        self, result: Result, server_round: int, arrays: ArrayRecord,
        evaluate_fn: EvaluateFn | None, on_round: OnRound | None,
    ) -> None:
        """Close this round's ledger and hand the round to the ServerApp's callbacks."""
        ledger, self.ledger = self.ledger, RoundLedger()
        if on_round is not None:
            report = RoundReport(server_round, arrays, ledger, self.state_dict(),
                                 dict(self.label_counts), self.journal())
            if (metrics := on_round(report)) is not None:
                result.evaluate_metrics_serverapp[server_round] = metrics
        if evaluate_fn is not None and (metrics := evaluate_fn(server_round, arrays)) is not None:
            result.evaluate_metrics_serverapp[server_round] = metrics

    # -- send, screen, count ----------------------------------------------------------------------

    def _count_down(self, messages: Iterable[Message]) -> list[Message]:
        """Count the bytes of messages about to go out."""
        out = list(messages)
        self.ledger.bytes_down += sum(content_bytes(m.content) for m in out)
        return out

    def _screen(
        self, replies: Iterable[Message], sent: int, check: Check | None, keep_errors: bool,
        message_type: str,
    ) -> list[Message]:
        """The sound replies; error, missing and rejected ones are logged and counted.

        Failures are counted under ``message_type``'s phase (``failed-train``,
        ``failed-evaluate``, ``failed-query``). Error replies are logged here;
        ``keep_errors`` passes them on (Flower's FedAvg skips them itself), otherwise
        they are dropped.
        """
        replies = list(replies)
        if sent > len(replies):
            self.ledger.count_failed(message_type, sent - len(replies))  # never arrived
            log(WARNING, "%s: %d of %d nodes did not answer", message_type,
                sent - len(replies), sent)
        accepted = []
        for msg in replies:
            if msg.has_error():
                self.ledger.count_failed(message_type)
                log(WARNING, "%s: %s replied with an error: %s", message_type,
                    self._who(msg), msg.error.reason)
                if keep_errors:
                    accepted.append(msg)
                continue
            self.ledger.bytes_up += content_bytes(msg.content)
            self._learn_partition(msg)
            reason = check(msg.content) if check is not None else None
            if reason is None:
                accepted.append(msg)
            else:
                self._reject(msg, reason, message_type)
        return accepted

    def _send(
        self,
        grid: Grid,
        server_round: int,
        message_type: str,
        contents: Mapping[int, RecordDict],
        check: Check | None = None,
    ) -> dict[int, RecordDict]:
        """Send ``contents[node]`` to every node; return the sound replies by node id."""
        messages = self._count_down(
            grid.create_message(content, message_type, node, str(server_round))
            for node, content in contents.items()
        )
        t0 = time.perf_counter()
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        self.ledger.train_phase_s += time.perf_counter() - t0
        accepted = self._screen(replies, len(messages), check, keep_errors=False,
                                message_type=message_type)
        return {msg.metadata.src_node_id: msg.content for msg in accepted}

    def _reject(self, msg: Message, reason: str, message_type: str = "reply") -> None:
        self.ledger.rejected += 1
        self.rejected_total += 1
        log(WARNING, "Rejected %s reply from %s: %s", message_type, self._who(msg), reason)

    def _learn_partition(self, msg: Message) -> None:
        """Remember the partition a node serves, from any reply's ``client-info``."""
        info = decode_client_info(msg.content)
        if info is not None:
            self.partitions[msg.metadata.src_node_id] = info.partition_id

    def _who(self, msg: Message) -> str:
        """``node 101 (partition 1)``, or ``(partition unknown)`` before its first client-info."""
        node = msg.metadata.src_node_id
        part = self.partitions.get(node)
        return f"node {node} (partition {'unknown' if part is None else part})"

    def _log_client_once(self, content: RecordDict) -> None:
        """Log a reply's ``client-info`` (partition, trainer, model, labels) the first time."""
        info = decode_client_info(content)
        if info is not None and info.partition_id not in self.label_counts:
            self.label_counts[info.partition_id] = info.label_counts
            log(INFO, "Client partition %d (%s, %s): %d examples, labels %s",
                info.partition_id, info.trainer, info.model, sum(info.label_counts),
                info.label_counts)
