"""The ServerApp's round recorder: evaluate, write ``metrics.jsonl``, checkpoint.

It receives each :class:`~fedapp.ledger.RoundReport` a strategy hands out and works
from the report alone: it never calls back into the strategy.
"""

from __future__ import annotations

import dataclasses
import time
from logging import INFO

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common import log

from fedapp.checkpoint import Checkpoint, capture_rng, config_fingerprint
from fedapp.config import AppConfig
from fedapp.ledger import RoundReport
from fedapp.results import ResultsWriter
from fedapp.task.data import load_server_test, load_server_val
from fedapp.task.evaluate import EvalResult, evaluate, resolve_device


class RoundRecorder:
    """Record every reported round: server-side evaluation, one row, one checkpoint.

    Parameters
    ----------
    global_model : bool
        Whether the strategy has a global model to evaluate on the server's test set;
        without one (FedVTC) the report's ``accuracy`` and ``loss`` are the row's.
    label_counts : dict
        Clients seen before this run started (resume), for ``clients.json``.
    """

    def __init__(
        self,
        cfg: AppConfig,
        writer: ResultsWriter,
        model: torch.nn.Module,
        global_model: bool = True,
        elapsed_s: float = 0.0,
        label_counts: dict[int, list[int]] | None = None,
    ) -> None:
        self.cfg, self.writer, self.model = cfg, writer, model
        self.global_model = global_model
        self.label_counts = dict(label_counts or {})
        self.device = resolve_device(cfg.client.device)
        self.test, _ = load_server_test(cfg.data, cfg.seed)
        self.val = load_server_val(cfg.data, cfg.seed)
        self.t_last = time.perf_counter()
        self.t_start = self.t_last - elapsed_s  # a resumed run keeps counting

    def __call__(self, report: RoundReport) -> MetricRecord:
        extra = dict(report.ledger.extra)
        result = self._evaluate(report.arrays, extra)
        ledger = dataclasses.replace(report.ledger, extra=extra)
        now = time.perf_counter()
        row = {
            "round": report.round,
            "accuracy": result.accuracy,
            "loss": result.loss,
            **self._validate(report.arrays),
            **ledger.as_row(),
            "wall-s": round(now - self.t_last, 4),
            "elapsed-s": round(now - self.t_start, 4),
        }
        self.t_last = now
        self.writer.add_journal(report.journal)  # before the row and the checkpoint: resume reads
        self.writer.add_round(row)  # both up to the checkpoint's round
        self.label_counts = dict(report.label_counts)
        self._checkpoint(report)
        log(
            INFO,
            "round %d/%d  accuracy %.4f  loss %.4f  up %.1f KiB  down %.1f KiB  "
            "clients %d  failed-train %d  failed-evaluate %d  rejected %d  elapsed %.1fs",
            report.round,
            self.cfg.num_server_rounds,
            result.accuracy,
            result.loss,
            ledger.bytes_up / 1024,
            ledger.bytes_down / 1024,
            ledger.clients,
            ledger.failed_train,
            ledger.failed_evaluate + ledger.failed_query,
            ledger.rejected,
            now - self.t_start,
        )
        return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

    def _evaluate(self, arrays: ArrayRecord, extra: dict[str, float]) -> EvalResult:
        """The global model on the server's test set; strategies without one report their own."""
        if not self.global_model:
            nan = float("nan")
            return EvalResult(extra.pop("loss", nan), extra.pop("accuracy", nan), len(self.test))
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(self.model, self.test, self.cfg.server.eval_batch_size, self.device)

    def _validate(self, arrays: ArrayRecord) -> dict[str, float]:
        """``val-accuracy`` and ``val-loss`` of the global model on the validation split, if any."""
        if self.val is None or not self.global_model:
            return {}
        self.model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(self.model, self.val, self.cfg.server.eval_batch_size, self.device)
        return {"val-accuracy": result.accuracy, "val-loss": result.loss}

    def _checkpoint(self, report: RoundReport) -> None:
        Checkpoint(
            round=report.round,
            model=self.cfg.model.name,
            state_dict=report.arrays.to_torch_state_dict(),
            strategy=report.state,
            label_counts=dict(report.label_counts),
            config=config_fingerprint(self.cfg),
            elapsed_s=time.perf_counter() - self.t_start,
            rng=capture_rng(),
        ).save(self.writer.dir)
