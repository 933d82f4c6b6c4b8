"""Reply screening and traffic accounting, mixed into Flower's message strategies.

:class:`Screened` sits before a Flower strategy in the MRO
(``class ScreenedFedAvg(Screened, FedAvg)``). Before Flower aggregates, every
reply is checked against the wire contract (:mod:`fedapp.wire`): NaN/Inf,
wrong keys, shapes or dtypes are logged, counted and dropped, and the round
goes on with the rest. Bytes are counted from the records actually sent and
received, and the per-round tallies are handed out by :meth:`close_round`.

Resume contract (``resume = true``; :mod:`fedapp.checkpoint`). Every strategy
exposes :meth:`Screened.state_dict` (saved with each round's checkpoint) and
:meth:`Screened.load_state_dict` (called with it before a resumed run starts),
and honours :attr:`Screened.start_round`, the first round still to run (1 for a
fresh run, ``k + 1`` after a checkpoint of round ``k``):

- strategies that use Flower's ``Strategy.start()`` get this for free:
  :meth:`Screened.start` runs only rounds ``start_round..num_rounds``, passing
  their true numbers to ``configure_*``/``aggregate_*`` and ``evaluate_fn``, and
  skips the round-0 evaluation when resuming;
- strategies that override ``start()`` with their own loop iterate over
  ``self.rounds(num_rounds)`` and call ``evaluate_fn(0, ...)`` only when
  ``not self.resuming``.
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
from flwr.serverapp.strategy import Result

from fedapp.wire import weights
from fedapp.wire.common import content_bytes, decode_client_info, match_dtypes


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
    select: str = "final"  # the round the run reports (fedapp.results.select_round)
    ledger: RoundLedger
    label_counts: dict[int, list[int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = RoundLedger()
        self.label_counts = {}
        self.rejected_total = 0

    start_round: int = 1  # first round to run; > 1 when resuming from a checkpoint

    def state_dict(self) -> dict[str, Any]:
        """Strategy state saved with every checkpoint (generators, optimisers, ...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (resume); stateless strategies ignore it."""

    @property
    def resuming(self) -> bool:
        return self.start_round > 1

    def rounds(self, num_rounds: int) -> range:
        """The rounds a custom ``start()`` loop still has to run."""
        return range(self.start_round, num_rounds + 1)

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
        info = decode_client_info(content)
        if info is not None and info.partition_id not in self.label_counts:
            self.label_counts[info.partition_id] = info.label_counts
            log(
                INFO,
                "Client partition %d (%s, %s): %d examples, labels %s",
                info.partition_id,
                info.trainer,
                info.model,
                sum(info.label_counts),
                info.label_counts,
            )


class Screened(Accounting):
    """Mixin: screen replies, count bytes and failures, log each client's labels once."""

    _reference: ArrayRecord

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop over rounds ``start_round..num_rounds`` (see the module doc).

        Flower's ``Strategy.start()`` always counts from 1, so a resumed run hands it a
        view of this strategy whose hooks add ``start_round - 1`` to the round number.
        """
        flower_start = super().start  # type: ignore[misc]
        if not self.resuming:
            return flower_start(  # type: ignore[no-any-return]
                grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                evaluate_fn,
            )
        offset = self.start_round - 1
        shifted_eval = None
        if evaluate_fn is not None:
            def shifted_eval(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
                return None if rnd == 0 else evaluate_fn(rnd + offset, arrays)
        return flower_start.__func__(  # type: ignore[no-any-return]
            _RoundShift(self, offset), grid, initial_arrays, num_rounds - offset, timeout,
            train_config, evaluate_config, shifted_eval,
        )

    def _sent(self, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        self.ledger.bytes_down += sum(content_bytes(m.content) for m in out)
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
            self.ledger.bytes_up += content_bytes(msg.content)
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
            replies, lambda c: weights.screen_train_reply(c, self._reference)
        )
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        if arrays is not None:
            arrays = match_dtypes(arrays, self._reference)
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
        accepted = self._screen(replies, self._eval_sent, weights.screen_eval_reply)
        return super().aggregate_evaluate(server_round, accepted)  # type: ignore[misc]


class _RoundShift:
    """A strategy as Flower's loop sees it on resume: round ``r`` is really ``r + offset``."""

    def __init__(self, strategy: Screened, offset: int) -> None:
        self._strategy, self._offset = strategy, offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)

    def configure_train(self, server_round: int, *args: Any) -> Iterable[Message]:
        return self._strategy.configure_train(server_round + self._offset, *args)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self._strategy.aggregate_train(server_round + self._offset, replies)

    def configure_evaluate(self, server_round: int, *args: Any) -> Iterable[Message]:
        return self._strategy.configure_evaluate(server_round + self._offset, *args)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self._strategy.aggregate_evaluate(server_round + self._offset, replies)
