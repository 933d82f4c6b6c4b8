"""Run the real ServerApp ``main`` against the ClientApp in one process (no Flower runtime).

Benchmarks with many seeds use this instead of ``flwr run``: the messages,
handlers, screening and byte counts are the same; Ray and the SuperLink are
not. The grid is the tests' :class:`FakeGrid` (``tests/fakes.py``), loaded by
path so the two stay one implementation.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict

from bench.flwr_cli import ROOT
from fedapp.client_app import app as client_app
from fedapp.results import read_rounds
from fedapp.server_app import main

sys.path.insert(0, str(ROOT / "tests"))
from fakes import FakeGrid  # noqa: E402


def pyproject_defaults() -> dict[str, Any]:
    """The run config of pyproject.toml as Flower's flat dotted keys."""

    def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            nested = isinstance(value, dict)
            out.update(flatten(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}": value})
        return out

    with (ROOT / "pyproject.toml").open("rb") as f:
        return flatten(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def run_inprocess(
    run_config: dict[str, Any],
    num_nodes: int,
    node_config: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], Path, FakeGrid]:
    """Run the ServerApp for ``run_config``; returns its metrics rows, results dir and grid."""
    grid = FakeGrid(client_app, run_config, num_nodes, node_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)
    main(grid, context)
    out = Path(run_config["output-dir"]) / run_config["run-name"]
    return read_rounds(out), out, grid
