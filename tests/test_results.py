"""Results contract: atomic files, the per-round schema, a crash loses nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedapp import results
from fedapp.plots import plot_curves
from fedapp.results import ROUND_KEYS, ResultsWriter, read_rounds, select_round


def row(r: int) -> dict:
    return {k: 0 for k in ROUND_KEYS} | {"round": r, "accuracy": 0.1 * r, "loss": 1.0 / (r + 1)}


def test_writer_schema_and_rewrite(tmp_path: Path) -> None:
    w = ResultsWriter(tmp_path / "run", {"seed": 3})
    for r in range(3):
        w.add_round(row(r))
    assert [x["round"] for x in read_rounds(tmp_path / "run")] == [0, 1, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"seed": 3}
    with pytest.raises(ValueError, match="lacks"):
        w.add_round({"round": 3})
    plot_curves(w.rows, tmp_path / "run" / "curves.png")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_crash_mid_write_leaves_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    w = ResultsWriter(tmp_path / "run", {})
    w.add_round(row(0))
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        w.add_round(row(1))
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_run_dir_is_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert results.run_dir("results", "x") == tmp_path.resolve() / "results" / "x"


def test_select_round_final_or_best_on_validation() -> None:
    rows = [
        {"round": 0, "accuracy": 0.1, "loss": 2.3, "val-accuracy": 0.9},  # never the initial model
        {"round": 1, "accuracy": 0.5, "loss": 1.0, "val-accuracy": 0.6},
        {"round": 2, "accuracy": 0.9, "loss": 0.4, "val-accuracy": 0.7},
        {"round": 3, "accuracy": 0.8, "loss": 0.5, "val-accuracy": 0.7},
    ]
    assert select_round(rows, "final")["round"] == 3
    best = select_round(rows, "best_on_val")
    assert best == {"rule": "best_on_val", "round": 2, "accuracy": 0.9, "loss": 0.4,
                    "val-accuracy": 0.7}  # ties go to the earlier round
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_round(rows, "best_on_test")
