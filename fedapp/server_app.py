"""The ServerApp: validate the config, build the strategy, run it, write the results."""

from __future__ import annotations

import random
import sys
import time
from importlib.metadata import version
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedapp import records
from fedapp.checkpoint import (
    Checkpoint,
    capture_rng,
    checkpoint_path,
    config_fingerprint,
    load_checkpoint,
    restore_rng,
)
from fedapp.config import AppConfig, ConfigError, load_config
from fedapp.liveness import LivenessGrid, NodesUnavailable
from fedapp.plots import plot_curves
from fedapp.results import (
    NothingAggregated,
    ResultsWriter,
    check_aggregated,
    check_run_dir,
    run_dir,
    select_round,
)
from fedapp.task.data import DataError, load_server_test, load_server_val
from fedapp.task.evaluate import EvalResult, evaluate, resolve_device
from fedapp.task.models import build_model
from fedapp.task.seeding import PURPOSE_INIT, PURPOSE_SAMPLING, derive_seed
from strategies import Accounting, build_strategy

app = ServerApp()


def _fail(error: Exception) -> None:
    """Stop the run: log one readable line, then raise so Flower marks the run failed.

    Flower logs every ServerApp exception with its traceback; dropping the frames below
    this call leaves two lines of ours in it (``main`` and this ``raise``).
    """
    log(ERROR, "fedzg: %s", error)
    raise error.with_traceback(None) from None


def _submitted(grid: Grid) -> dict[str, Any] | None:
    """The run-config keys the user submitted (Flower's ``Run``); ``None`` where a Grid has no Run."""
    try:
        return dict(grid.run.override_config)
    except NotImplementedError:  # the in-process Grid of tests and benchmarks
        return None


def _config_record(cfg: AppConfig) -> dict[str, Any]:
    return {
        # without `resume`, so a resumed run's config.json equals the uninterrupted one's
        "config": cfg.model_dump(mode="json", by_alias=True, exclude={"resume"}),
        "seed": cfg.seed,
        "versions": {
            "fedzg": version("fedzg") if _installed("fedzg") else "source",
            "flwr": version("flwr"),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }


def _installed(dist: str) -> bool:
    try:
        version(dist)
    except Exception:
        return False
    return True


class RoundRecorder:
    """The ``evaluate_fn`` Flower calls after every round: evaluate, record, checkpoint."""

    def __init__(
        self,
        cfg: AppConfig,
        strategy: Accounting,
        writer: ResultsWriter,
        model: torch.nn.Module,
        elapsed_s: float = 0.0,
    ) -> None:
        self.cfg, self.strategy, self.writer, self.model = cfg, strategy, writer, model
        self.device = resolve_device(cfg.client.device)
        self.test, _ = load_server_test(cfg.data, cfg.seed)
        self.val = load_server_val(cfg.data, cfg.seed)
        self.t_last = time.perf_counter()
        self.t_start = self.t_last - elapsed_s  # a resumed run keeps counting

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        ledger = self.strategy.close_round()
        result = self._evaluate(arrays, ledger.extra)
        now = time.perf_counter()
        row = {
            "round": server_round,
            "accuracy": result.accuracy,
            "loss": result.loss,
            **self._validate(arrays),
            **ledger.as_row(),
            "wall-s": round(now - self.t_last, 4),
            "elapsed-s": round(now - self.t_start, 4),
        }
        self.t_last = now
        self.writer.add_round(row)
        self._checkpoint(server_round, arrays)
        log(
            INFO,
            "round %d/%d  accuracy %.4f  loss %.4f  up %.1f KiB  down %.1f KiB  "
            "clients %d  failed %d  rejected %d  elapsed %.1fs",
            server_round,
            self.cfg.num_server_rounds,
            result.accuracy,
            result.loss,
            ledger.bytes_up / 1024,
            ledger.bytes_down / 1024,
            ledger.clients,
            ledger.failed,
            ledger.rejected,
            now - self.t_start,
        )
        return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

    def _evaluate(self, arrays: ArrayRecord, extra: dict[str, float]) -> EvalResult:
        """The global model on the server's test set; strategies without one report their own."""
        if not self.strategy.has_global_model:
            nan = float("nan")
            return EvalResult(extra.pop("loss", nan), extra.pop("accuracy", nan), len(self.test))
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(self.model, self.test, self.cfg.server.eval_batch_size, self.device)

    def _validate(self, arrays: ArrayRecord) -> dict[str, float]:
        """``val-accuracy`` and ``val-loss`` of the global model on the validation split, if any."""
        if self.val is None or not self.strategy.has_global_model:
            return {}
        self.model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(self.model, self.val, self.cfg.server.eval_batch_size, self.device)
        return {"val-accuracy": result.accuracy, "val-loss": result.loss}

    def _checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        Checkpoint(
            round=server_round,
            model=self.cfg.model.name,
            state_dict=arrays.to_torch_state_dict(),
            strategy=self.strategy.state_dict(),
            rows=list(self.writer.rows),
            label_counts=dict(self.strategy.label_counts),
            config=config_fingerprint(self.cfg),
            elapsed_s=time.perf_counter() - self.t_start,
            rng=capture_rng(),
        ).save(self.writer.dir)


def _resume(cfg: AppConfig, out: Path, strategy: Accounting) -> Checkpoint | None:
    """Load the checkpoint ``cfg.resume`` names into ``strategy`` and the RNGs."""
    path = checkpoint_path(cfg, out)
    if path is None:
        return None
    ckpt = load_checkpoint(path, cfg)
    strategy.load_state_dict(ckpt.strategy)
    strategy.label_counts = dict(ckpt.label_counts)
    strategy.start_round = ckpt.round + 1
    restore_rng(ckpt.rng)
    log(INFO, "fedzg: resuming from %s after round %d", path, ckpt.round)
    return ckpt


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``cfg.strategy`` for ``num-server-rounds`` rounds and write the results."""
    try:
        cfg = load_config(context.run_config, _submitted(grid))
        out = run_dir(cfg.output_dir, cfg.run_name)
        resumes_here = (path := checkpoint_path(cfg, out)) is not None and path.parent == out
        check_run_dir(out, resuming=resumes_here, overwrite=cfg.overwrite)
    except ConfigError as exc:
        _fail(exc)
        return
    random.seed(derive_seed(cfg.seed, PURPOSE_SAMPLING))  # Flower samples nodes with `random`
    log(INFO, "fedzg: strategy %s, results in %s", cfg.strategy, out)
    try:
        _, spec = load_server_test(cfg.data, cfg.seed)
    except DataError as exc:
        _fail(exc)
        return
    model = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    strategy = build_strategy(cfg)
    try:
        ckpt = _resume(cfg, out, strategy)
    except ConfigError as exc:
        _fail(exc)
        return
    if ckpt is not None:
        model.load_state_dict(ckpt.state_dict)
    writer = ResultsWriter(out, _config_record(cfg), rows=ckpt.rows if ckpt else None)
    recorder = RoundRecorder(cfg, strategy, writer, model, ckpt.elapsed_s if ckpt else 0.0)
    live = LivenessGrid(grid, cfg.timeouts, cfg.server.min_available_nodes)
    try:
        if strategy.start_round <= cfg.num_server_rounds:
            live.wait_for_nodes()
            strategy.start(
                grid=live,
                initial_arrays=records.pack_arrays(model.state_dict()),
                num_rounds=cfg.num_server_rounds,
                timeout=cfg.round_timeout,
                train_config=ConfigRecord(),
                evaluate_config=ConfigRecord(),
                evaluate_fn=recorder,
            )
    except NodesUnavailable as exc:
        _fail(exc)
        return
    writer.write_json("clients.json", {str(k): v for k, v in sorted(strategy.label_counts.items())})
    plot_curves(writer.rows, out / "curves.png", title=f"{cfg.strategy} on {cfg.data.dataset}")
    last, chosen = writer.rows[-1], select_round(writer.rows, strategy.select)
    writer.write_json("selected.json", chosen)
    try:
        check_aggregated(writer.rows)
    except NothingAggregated as exc:
        _fail(exc)
        return
    log(
        INFO,
        "fedzg: done, final accuracy %.4f after %d rounds; reported (%s) round %d, accuracy "
        "%.4f; results in %s",
        last["accuracy"],
        last["round"],
        chosen["rule"],
        chosen["round"],
        chosen["accuracy"],
        out,
    )
