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


def test_a_crash_mid_append_leaves_the_previous_rows(tmp_path: Path, monkeypatch) -> None:
    # metrics.jsonl is appended, not rewritten: a crash mid-write can tear only the new line,
    # and readers drop a torn last line
    w = ResultsWriter(tmp_path / "run", {})
    w.add_round(row(0))
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    real_write = results.os.write

    def torn(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "write", torn)
    with pytest.raises(OSError, match="disk full"):
        w.add_round(row(1))
    monkeypatch.undo()
    text = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    assert text.startswith(before) and len(text) > len(before)  # the torn half is there
    assert results.read_rounds(tmp_path / "run") == [row(0)]  # and ignored
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_appending_a_round_costs_the_same_at_round_500(tmp_path: Path, monkeypatch) -> None:
    # each add_round writes one line: the bytes written do not grow with the rows already there
    w = ResultsWriter(tmp_path / "run", {})
    written: list[int] = []
    real_write = results.os.write
    monkeypatch.setattr(results.os, "write", lambda fd, d: written.append(len(d)) or real_write(fd, d))
    for r in range(500):
        w.add_round(row(r))
    assert max(written) < 2 * min(written)  # one row's bytes each time, never the whole file
    assert [r["round"] for r in results.read_rounds(tmp_path / "run")] == list(range(500))


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
