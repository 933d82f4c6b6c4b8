"""What a strategy reports after each round: its tallies, model and state (one-way).

A strategy fills a :class:`RoundLedger` while a round runs and, when the round
is over, hands a :class:`RoundReport` to the callback the ServerApp gave it
(:class:`fedapp.recorder.RoundRecorder`). The recorder evaluates, writes and
checkpoints from the report alone; it never calls back into the strategy.
Standard library and ``flwr.app`` records only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from flwr.app import ArrayRecord, MetricRecord


@dataclass
class RoundLedger:
    """Tallies of one server round, summed over clients."""

    bytes_down: int = 0
    bytes_up: int = 0
    sampled: int = 0  # train messages sent
    clients: int = 0  # train replies aggregated
    failed_train: int = 0  # train* error replies and replies that never came
    failed_evaluate: int = 0  # the same for evaluate* messages
    failed_query: int = 0  # the same for query* messages (FedZGE's logits)
    rejected: int = 0  # replies that failed screening
    skipped_evaluate: int = 0  # evaluate replies "nothing to evaluate" (no local test data)
    train_phase_s: float = 0.0  # from sending train messages to having all replies
    evaluate_phase_s: float = 0.0  # the same for client-side evaluation
    extra: dict[str, float] = field(default_factory=dict)  # strategy-specific per-round metrics

    @property
    def failed(self) -> int:
        """Failed replies of every phase."""
        return self.failed_train + self.failed_evaluate + self.failed_query

    def count_failed(self, message_type: str, n: int = 1) -> None:
        """Count ``n`` failed replies to ``message_type`` under its phase (``train.seeds``: train)."""
        name = f"failed_{message_type.partition('.')[0]}"
        if name not in FAILED_PHASES:
            raise ValueError(f"no failure counter for message type {message_type!r}")
        setattr(self, name, getattr(self, name) + n)

    def as_row(self) -> dict[str, float]:
        fields = {k: v for k, v in asdict(self).items() if k != "extra"}
        row = {k.replace("_", "-"): v for k, v in fields.items()} | self.extra
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


#: The ledger's per-phase failure counters (``failed-<phase>`` in ``metrics.jsonl``).
FAILED_PHASES = ("failed_train", "failed_evaluate", "failed_query")


@dataclass(frozen=True)
class RoundReport:
    """One finished round as the strategy reports it (round 0: the initial model)."""

    round: int
    arrays: ArrayRecord  # the global model after the round (empty without one)
    ledger: RoundLedger
    state: dict[str, Any]  # the strategy's checkpoint state after the round
    label_counts: dict[int, list[int]]  # partition id -> label histogram, clients seen so far
    journal: list[dict[str, Any]] = field(default_factory=list)  # append-only state, with "round"


#: The ServerApp's callback: record a round; its MetricRecord goes into Flower's Result.
OnRound = Callable[[RoundReport], MetricRecord | None]
