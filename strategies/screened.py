"""Reply screening and traffic accounting, mixed into Flower's message strategies.

:class:`Screened` sits before a Flower strategy in the MRO
(``class ScreenedFedAvg(Screened, FedAvg)``). Before Flower aggregates, every
reply is checked against the wire contract (:mod:`fedapp.records`): NaN/Inf,
wrong keys, shapes or dtypes are logged, counted and dropped, and the round
goes on with the rest. Bytes are counted from the records actually sent and
received, and the per-round tallies are handed out by :meth:`close_round`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedapp import records


@dataclass
class RoundLedger:
    """Tallies of one server round, summed over clients."""

    bytes_down: int = 0
    bytes_up: int = 0
    sampled: int = 0  # train messages sent
    clients: int = 0  # train replies aggregated
    failed: int = 0  # error replies and replies that never came
    rejected: int = 0  # replies that failed screening
    train_phase_s: float = 0.0  # from sending train messages to having all replies
    evaluate_phase_s: float = 0.0  # the same for client-side evaluation
    extra: dict[str, float] = field(default_factory=dict)  # strategy-specific per-round metrics

    def as_row(self) -> dict[str, float]:
        fields = {k: v for k, v in asdict(self).items() if k != "extra"}
        row = {k.replace("_", "-"): v for k, v in fields.items()} | self.extra
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


class Accounting:
    """Per-round tallies and client bookkeeping shared by every strategy.

    Flower-derived strategies get it through :class:`Screened`; strategies with
    their own round loop through :class:`strategies._phased.PhasedStrategy`. The
    ServerApp reads :meth:`close_round` after every round and checkpoints
    :meth:`state_dict`. A strategy without a global model (FedVTC) sets
    ``has_global_model = False`` and reports its round's ``accuracy`` and
    ``loss`` in ``ledger.extra`` instead of being evaluated by the server.
    """

    has_global_model: bool = True
    ledger: RoundLedger
    label_counts: dict[int, list[int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = RoundLedger()
        self.label_counts = {}
        self.rejected_total = 0

    def state_dict(self) -> dict[str, Any]:
        """Strategy state saved with every checkpoint (generators, optimisers, ...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (stateless strategies have nothing to restore)."""

    def close_round(self) -> RoundLedger:
        """Hand out this round's tallies and start a fresh ledger."""
        done, self.ledger = self.ledger, RoundLedger()
        return done

    def _reject(self, msg: Message, reason: str) -> None:
        self.ledger.rejected += 1
        self.rejected_total += 1
        log(WARNING, "Rejected reply from node %d: %s", msg.metadata.src_node_id, reason)

    def _log_labels_once(self, replies: list[Message]) -> None:
        for msg in replies:
            if not msg.has_error():
                self._log_client_once(msg.content)

    def _log_client_once(self, content: RecordDict) -> None:
        """Log a reply's ``client-info`` (partition, trainer, model, labels) the first time."""
        if records.CLIENT_INFO in content.config_records:
            info = content.config_records[records.CLIENT_INFO]
            pid = int(info[records.INFO_PARTITION])  # type: ignore[arg-type]
            if pid not in self.label_counts:
                counts = [int(c) for c in info[records.INFO_LABEL_COUNTS]]  # type: ignore[union-attr]
                self.label_counts[pid] = counts
                log(
                    INFO,
                    "Client partition %d (%s, %s): %d examples, labels %s",
                    pid,
                    info[records.INFO_TRAINER],
                    info[records.INFO_MODEL],
                    sum(counts),
                    counts,
                )


class Screened(Accounting):
    """Mixin: screen replies, count bytes and failures, log each client's labels once."""

    _reference: ArrayRecord

    def _sent(self, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        self.ledger.bytes_down += sum(records.content_bytes(m.content) for m in out)
        return out

    def _screen(
        self, replies: Iterable[Message], sent: int, check: Callable[[RecordDict], str | None]
    ) -> list[Message]:
        replies = list(replies)
        self.ledger.failed += sent - len(replies)  # replies that never arrived
        accepted = []
        for msg in replies:
            if msg.has_error():
                self.ledger.failed += 1
                accepted.append(msg)  # Flower logs and skips error replies itself
                continue
            self.ledger.bytes_up += records.content_bytes(msg.content)
            reason = check(msg.content)
            if reason is None:
                accepted.append(msg)
            else:
                self._reject(msg, reason)
        return accepted

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = arrays
        messages = self._sent(
            super().configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)  # type: ignore[misc]
        )
        self.ledger.sampled = len(messages)
        self._train_sent = len(messages)
        self._phase_start = time.perf_counter()
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.ledger.train_phase_s += time.perf_counter() - self._phase_start
        accepted = self._screen(
            replies, self._train_sent, lambda c: records.screen_train_reply(c, self._reference)
        )
        self._log_labels_once(accepted)
        self.ledger.clients = sum(not m.has_error() for m in accepted)
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        if arrays is not None:
            arrays = records.match_dtypes(arrays, self._reference)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self._sent(
            super().configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid)  # type: ignore[misc]
        )
        self._eval_sent = len(messages)
        self._phase_start = time.perf_counter()
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        self.ledger.evaluate_phase_s += time.perf_counter() - self._phase_start
        accepted = self._screen(replies, self._eval_sent, records.screen_eval_reply)
        return super().aggregate_evaluate(server_round, accepted)  # type: ignore[misc]
