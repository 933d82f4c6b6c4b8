"""The results contract: what every run writes under ``<output-dir>/<run-name>/``.

- ``config.json``: the validated config, versions and seed;
- ``metrics.jsonl``: one JSON object per server round (round 0 is the initial model);
- ``clients.json``: each client partition's label histogram, trainer and model;
- ``model.pt``: the latest global model (written by the ServerApp each round);
- ``selected.json``: the round the run reports (:func:`select_round`) and its numbers;
- ``curves.png``: accuracy, loss and bytes per round (:mod:`fedapp.plots`).

Every file is written whole to a temporary name and renamed into place, so a
crash never leaves a half-written file. Standard library only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ROUND_KEYS = (
    "round",
    "accuracy",
    "loss",
    "bytes-up",
    "bytes-down",
    "clients",
    "failed",
    "rejected",
    "wall-s",
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def run_dir(output_dir: str, run_name: str) -> Path:
    """Absolute results directory (the ServerApp's cwd is the SuperLink's, not the user's)."""
    return (Path(output_dir).expanduser() / run_name).resolve()


def read_rounds(directory: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (for plots, benchmarks and tests)."""
    path = directory / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def select_round(rows: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The round a run reports: ``final`` (the last row) or ``best_on_val``.

    ``best_on_val`` takes the highest ``val-accuracy`` over the trained rounds (round 0
    is the initial model; ties go to the earliest round). Test accuracy never selects.
    """
    if rule == "final":
        chosen = rows[-1]
    elif rule == "best_on_val":
        trained = [r for r in rows if r["round"] > 0 and "val-accuracy" in r] or rows[-1:]
        chosen = max(trained, key=lambda r: (r.get("val-accuracy", float("-inf")), -r["round"]))
    else:
        raise ValueError(f"unknown selection rule {rule!r} (allowed: final, best_on_val)")
    keys = ("round", "accuracy", "loss", "val-accuracy", "val-loss")
    return {"rule": rule, **{k: chosen[k] for k in keys if k in chosen}}


class ResultsWriter:
    """Owns one run's results directory."""

    def __init__(
        self, directory: Path, config: dict[str, Any], rows: list[dict[str, Any]] | None = None
    ) -> None:
        """Start ``directory`` afresh, or from ``rows`` when resuming a checkpoint."""
        self.dir = directory
        self.rows: list[dict[str, Any]] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "metrics.jsonl").unlink(missing_ok=True)
        atomic_write_json(self.dir / "config.json", config)
        if rows:
            self.rows = list(rows)
            self._write_rows()

    def add_round(self, row: dict[str, Any]) -> None:
        """Append one round; ``metrics.jsonl`` is rewritten whole, atomically."""
        missing = [k for k in ROUND_KEYS if k not in row]
        if missing:
            raise ValueError(f"round row lacks {missing}")
        self.rows.append(row)
        self._write_rows()

    def _write_rows(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)
        atomic_write_bytes(self.dir / "metrics.jsonl", text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.dir / name, obj)
