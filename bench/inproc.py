"""In-process federations for benchmarks: the real ServerApp pieces and ClientApp, no Ray.

The Grid is the test suite's :class:`FakeGrid` (it calls our ClientApp handlers
directly, one node after another) with its message log switched off, so a
benchmark can run hundreds of rounds with many seeds in one process. Runs go
through the same strategy, :class:`fedapp.server_app.RoundRecorder` and
``metrics.jsonl`` as ``flwr run``; ``initial`` replaces the seeded initial model
(fine-tuning from a pre-trained model).
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Message

from bench.flwr_cli import ROOT
from fedapp import records
from fedapp.config import load_config
from fedapp.client_app import app as client_app
from fedapp.results import ResultsWriter, read_rounds, run_dir
from fedapp.server_app import RoundRecorder
from fedapp.task.data import load_server_test
from fedapp.task.models import build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from strategies import build_strategy

sys.path.insert(0, str(ROOT / "tests"))
from fakes import FakeGrid  # noqa: E402  (the one module allowed to touch Flower internals)


class QuietGrid(FakeGrid):
    """FakeGrid that forgets messages once answered (long runs stay small in memory)."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = super().send_and_receive(messages, timeout=timeout)
        self.sent.clear()
        self.received.clear()
        return replies


def defaults() -> dict[str, Any]:
    """The flat run config of pyproject.toml."""
    def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in table.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    with (ROOT / "pyproject.toml").open("rb") as f:
        return flat(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def run(
    overrides: dict[str, Any], num_nodes: int, initial: dict[str, torch.Tensor] | None = None
) -> list[dict[str, Any]]:
    """One federated run in this process; returns its ``metrics.jsonl`` rows."""
    flat = {**defaults(), **overrides}
    cfg = load_config(flat)
    _, spec = load_server_test(cfg.data, cfg.seed)
    model = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    if initial is not None:
        model.load_state_dict(initial)
    strategy = build_strategy(cfg)
    writer = ResultsWriter(run_dir(cfg.output_dir, cfg.run_name), {"config": flat})
    strategy.start(
        grid=QuietGrid(client_app, flat, num_nodes),
        initial_arrays=records.pack_arrays(model.state_dict()),
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.round_timeout,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=RoundRecorder(cfg, strategy, writer, model),
    )
    return read_rounds(Path(writer.dir))
