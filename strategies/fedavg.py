"""FedAvg and FedProx: Flower's own strategies, configured, screened and metered.

FedAvg: McMahan et al., AISTATS 2017, arXiv 1602.05629.
FedProx: Li et al., MLSys 2020, arXiv 1812.06127. Flower's ``FedProx`` sends
``proximal-mu`` in the train config; our first-order client adds
``mu/2 * ||w - w_global||^2`` to its loss (:mod:`clients.fo`).

:class:`FedAvgRounds` is the adapter every strategy built on Flower's FedAvg uses
(FedAvg, FedProx, FedGen, zo-seed): one round is Flower's train-then-evaluate
sequence of hooks, run by the shared loop of :class:`~strategies.base.FedzgStrategy`;
the hooks count bytes and screen replies before Flower aggregates them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from fedapp.config import AppConfig
from fedapp.wire import weights as wire
from fedapp.wire.common import content_bytes, match_dtypes
from strategies.base import Check, FedzgStrategy
from strategies.card import StrategyCard


class FedAvgRounds(FedzgStrategy):
    """Flower's FedAvg hooks behind reply screening and byte accounting.

    Sits before a Flower strategy in the MRO (``class ScreenedFedAvg(FedAvgRounds, FedAvg)``).
    """

    _reference: ArrayRecord

    def run_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Flower's round: ``configure_train``, send, ``aggregate_train``, then evaluate alike."""
        train = self.configure_train(server_round, arrays, self._train_config, grid)
        replies = grid.send_and_receive(train, timeout=self.timeout)
        aggregated, metrics = self.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        if metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
        evaluate = self.configure_evaluate(server_round, arrays, self._evaluate_config, grid)
        replies = grid.send_and_receive(evaluate, timeout=self.timeout)
        if (metrics := self.aggregate_evaluate(server_round, replies)) is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
        return arrays

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = arrays
        # Flower's FedAvg writes into the config it receives: hand it a copy
        return self._send_train(
            super().configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)
        )

    def _send_train(self, messages: Iterable[Message]) -> list[Message]:
        """Count the train messages about to go out and start the train phase's clock."""
        out = self._count_down(messages)
        self.ledger.sampled = len(out)
        self._train_sent = len(out)
        self._train_type = out[0].metadata.message_type if out else wire.TRAIN
        self._phase_start = time.perf_counter()
        return out

    def _accept_train(self, replies: Iterable[Message], check: Check) -> list[Message]:
        """Stop the train phase's clock, screen the replies with ``check``, log labels, count."""
        self.ledger.train_phase_s += time.perf_counter() - self._phase_start
        accepted = self._screen(replies, self._train_sent, check, keep_errors=True,
                                message_type=self._train_type)
        for msg in accepted:
            if not msg.has_error():
                self._log_client_once(msg.content)
        self.ledger.clients = sum(not m.has_error() for m in accepted)
        return accepted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept_train(
            replies, lambda c: wire.screen_train_reply(c, self._reference)
        )
        arrays, metrics = super().aggregate_train(server_round, accepted)
        if arrays is not None:
            arrays = match_dtypes(arrays, self._reference)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._send_evaluate(
            super().configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid)
        )

    def _send_evaluate(self, messages: Iterable[Message]) -> list[Message]:
        """Count the evaluate messages about to go out and start the evaluate phase's clock."""
        out = self._count_down(messages)
        self._eval_sent = len(out)
        self._eval_type = out[0].metadata.message_type if out else wire.EVALUATE
        self._phase_start = time.perf_counter()
        return out

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        self.ledger.evaluate_phase_s += time.perf_counter() - self._phase_start
        replies = list(replies)
        skipped = {id(m) for m in replies
                   if not m.has_error() and wire.nothing_to_evaluate(m.content)}
        self.ledger.skipped_evaluate += len(skipped)
        self.ledger.bytes_up += sum(content_bytes(m.content) for m in replies if id(m) in skipped)
        accepted = self._screen([m for m in replies if id(m) not in skipped],
                                self._eval_sent - len(skipped), wire.screen_eval_reply,
                                keep_errors=True, message_type=self._eval_type)
        if not accepted:
            return None
        return super().aggregate_evaluate(server_round, accepted)


class ScreenedFedAvg(FedAvgRounds, FedAvg):
    """Flower's FedAvg behind reply screening and byte accounting."""


class ScreenedFedProx(FedAvgRounds, FedProx):
    """Flower's FedProx behind reply screening and byte accounting."""


def common_kwargs(cfg: AppConfig) -> dict[str, Any]:
    """Sampling settings shared by every FedAvg-derived strategy."""
    return {
        "fraction_train": cfg.server.fraction_train,
        "fraction_evaluate": cfg.server.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.server.min_available_nodes,
    }


def build_fedavg(cfg: AppConfig) -> ScreenedFedAvg:
    return ScreenedFedAvg(**common_kwargs(cfg))


def build_fedprox(cfg: AppConfig) -> ScreenedFedProx:
    return ScreenedFedProx(**common_kwargs(cfg), proximal_mu=cfg.fedprox.mu)


WEIGHT_TRAINERS = frozenset({"fo", "zo", "mixed"})

FEDAVG = StrategyCard("fedavg", build_fedavg, WEIGHT_TRAINERS)
FEDPROX = StrategyCard("fedprox", build_fedprox, WEIGHT_TRAINERS)
