"""The ServerApp (Flower's server entry point): config, strategy, rounds, results.

The only module of :mod:`fedapp` that imports :mod:`strategies`: it validates the
run config, checks it against the strategy's card, builds the strategy, resumes
it from a checkpoint when asked, and runs it with a
:class:`~fedapp.recorder.RoundRecorder` as the strategy's ``on_round`` callback.
"""

from __future__ import annotations

import random
import sys
from importlib.metadata import version
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedapp.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, restore_rng
from fedapp.config import AppConfig, ConfigError, load_config
from fedapp.defaults import resolve_layers
from fedapp.liveness import LivenessGrid, NodesUnavailable
from fedapp.plots import plot_curves
from fedapp.recorder import RoundRecorder
from fedapp.results import (
    NothingAggregated,
    ResultsWriter,
    check_aggregated,
    check_run_dir,
    run_dir,
    select_round,
)
from fedapp.task.data import DataError, load_server_test
from fedapp.task.models import build_model
from fedapp.task.seeding import PURPOSE_INIT, PURPOSE_SAMPLING, derive_seed
from fedapp.wire.common import pack_arrays
from strategies import FedzgStrategy, card_for

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


def config_record(cfg: AppConfig, sources: dict[str, str]) -> dict[str, Any]:
    """``config.json``: the resolved config, where preset and card values came from, versions."""
    flat = cfg.model_dump(mode="json", by_alias=True, exclude={"resume"})
    return {
        # without `resume`, so a resumed run's config.json equals the uninterrupted one's
        "config": flat,
        "from-card": {k: v for k, v in sorted(sources.items()) if v.startswith("card:")},
        "from-preset": {k: v for k, v in sorted(sources.items()) if v.startswith("preset:")},
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


def _resume(cfg: AppConfig, out: Path, strategy: FedzgStrategy) -> Checkpoint | None:
    """Load the checkpoint ``cfg.resume`` names into ``strategy`` and the RNGs."""
    path = checkpoint_path(cfg, out)
    if path is None:
        return None
    ckpt = load_checkpoint(path, cfg)
    strategy.resume(ckpt.strategy, ckpt.label_counts, ckpt.round + 1, ckpt.journal or [])
    restore_rng(ckpt.rng)
    log(INFO, "fedzg: resuming from %s after round %d", path, ckpt.round)
    return ckpt


def _run(
    grid: Grid, cfg: AppConfig, strategy: FedzgStrategy, model: torch.nn.Module,
    recorder: RoundRecorder,
) -> None:
    """Run ``strategy`` from ``model`` until ``num-server-rounds``, recording each round."""
    strategy.start(
        grid=grid,
        initial_arrays=pack_arrays(model.state_dict()),
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.round_timeout,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        on_round=recorder,
    )


def federate(
    grid: Grid, cfg: AppConfig, model: torch.nn.Module, writer: ResultsWriter
) -> RoundRecorder:
    """A fresh run of ``cfg``'s strategy on ``grid`` from ``model`` (the in-process harness's)."""
    card = card_for(cfg)
    recorder = RoundRecorder(cfg, writer, model, card.global_model)
    _run(grid, cfg, card.build(cfg), model, recorder)
    return recorder


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``cfg.strategy`` for ``num-server-rounds`` rounds and write the results."""
    try:
        submitted = _submitted(grid)
        cfg = load_config(context.run_config, submitted)
        sources = resolve_layers(context.run_config, submitted)[1]
        card = card_for(cfg)
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
    strategy = card.build(cfg)
    try:
        ckpt = _resume(cfg, out, strategy)
    except ConfigError as exc:
        _fail(exc)
        return
    if ckpt is not None:
        model.load_state_dict(ckpt.state_dict)
    writer = ResultsWriter(out, config_record(cfg, sources), rows=ckpt.rows if ckpt else None,
                           journal=ckpt.journal if ckpt else None)
    recorder = RoundRecorder(cfg, writer, model, card.global_model,
                             ckpt.elapsed_s if ckpt else 0.0,
                             ckpt.label_counts if ckpt else None)
    live = LivenessGrid(grid, cfg.timeouts, cfg.server.min_available_nodes)
    try:
        if strategy.start_round <= cfg.num_server_rounds:
            live.wait_for_nodes()
            _run(live, cfg, strategy, model, recorder)
    except NodesUnavailable as exc:
        _fail(exc)
        return
    writer.write_json("clients.json", {str(k): v for k, v in sorted(recorder.label_counts.items())})
    plot_curves(writer.rows, out / "curves.png", title=f"{cfg.strategy} on {cfg.data.dataset}")
    last, chosen = writer.rows[-1], select_round(writer.rows, card.select(cfg))
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
