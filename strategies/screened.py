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
from dataclasses import asdict, dataclass
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

    def as_row(self) -> dict[str, float]:
        row = {k.replace("_", "-"): v for k, v in asdict(self).items()}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


class Screened:
    """Mixin: screen replies, count bytes and failures, log each client's labels once."""

    ledger: RoundLedger
    label_counts: dict[int, list[int]]
    _reference: ArrayRecord

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = RoundLedger()
        self.label_counts = {}
        self.rejected_total = 0

    def state_dict(self) -> dict[str, Any]:
        """Strategy state saved with every checkpoint (generators, optimisers, ...)."""
        return {}

    def close_round(self) -> RoundLedger:
        """Hand out this round's tallies and start a fresh ledger."""
        done, self.ledger = self.ledger, RoundLedger()
        return done

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
                self.ledger.rejected += 1
                self.rejected_total += 1
                log(WARNING, "Rejected reply from node %d: %s", msg.metadata.src_node_id, reason)
        return accepted

    def _log_labels_once(self, replies: list[Message]) -> None:
        for msg in replies:
            if msg.has_error() or records.CLIENT_INFO not in msg.content.config_records:
                continue
            info = msg.content.config_records[records.CLIENT_INFO]
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

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = arrays
        return self._send_train(
            super().configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)  # type: ignore[misc]
        )

    def _send_train(self, messages: Iterable[Message]) -> list[Message]:
        """Count the train messages about to go out and start the train phase's clock."""
        out = self._sent(messages)
        self.ledger.sampled = len(out)
        self._train_sent = len(out)
        self._phase_start = time.perf_counter()
        return out

    def _accept_train(
        self, replies: Iterable[Message], check: Callable[[RecordDict], str | None]
    ) -> list[Message]:
        """Stop the train phase's clock, screen the replies with ``check``, log labels, count."""
        self.ledger.train_phase_s += time.perf_counter() - self._phase_start
        accepted = self._screen(replies, self._train_sent, check)
        self._log_labels_once(accepted)
        self.ledger.clients = sum(not m.has_error() for m in accepted)
        return accepted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept_train(
            replies, lambda c: records.screen_train_reply(c, self._reference)
        )
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        if arrays is not None:
            arrays = records.match_dtypes(arrays, self._reference)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._send_evaluate(
            super().configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid)  # type: ignore[misc]
        )

    def _send_evaluate(self, messages: Iterable[Message]) -> list[Message]:
        """Count the evaluate messages about to go out and start the evaluate phase's clock."""
        out = self._sent(messages)
        self._eval_sent = len(out)
        self._phase_start = time.perf_counter()
        return out

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        self.ledger.evaluate_phase_s += time.perf_counter() - self._phase_start
        accepted = self._screen(replies, self._eval_sent, records.screen_eval_reply)
        return super().aggregate_evaluate(server_round, accepted)  # type: ignore[misc]
