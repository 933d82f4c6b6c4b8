"""``python -m fedapp compare``: a table of runs and an overlay plot, from results files only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedapp.__main__ import main
from fedapp.compare import Run, differing_keys, table
from fedapp.results import ROUND_KEYS, ResultsWriter


def write_run(root: Path, name: str, config: dict[str, Any], accuracies: list[float],
              bytes_up: int, bytes_down: int, sampled: int, wall: list[float]) -> Path:
    writer = ResultsWriter(root / name, {"config": config, "seed": 0})
    for rnd, acc in enumerate(accuracies):
        row = {k: 0 for k in ROUND_KEYS} | {"round": rnd, "accuracy": acc, "loss": 1.0}
        if rnd:
            row |= {"bytes-up": bytes_up, "bytes-down": bytes_down, "sampled": sampled,
                    "clients": sampled, "wall-s": wall[rnd - 1]}
        writer.add_round(row)
    return writer.dir


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    base = {"strategy": "fedavg", "run-name": "a", "output-dir": "x", "client": {"lr": 0.05, "trainer": "fo"}}
    a = write_run(tmp_path, "a", base, [0.1, 0.6, 0.8, 0.7], 4096, 8192, 2, [1.0, 2.0, 3.0])
    b = write_run(tmp_path, "b", {**base, "strategy": "zo-seed", "run-name": "b",
                                  "client": {"lr": 0.05, "trainer": "zo"}},
                  [0.1, 0.3, 0.4], 1024, 2048, 4, [0.5, 1.5])
    return a, b


def test_summary_numbers_are_exact(two_runs: tuple[Path, Path]) -> None:
    a = Run.load(str(two_runs[0])).summary()
    # final = last round; best over trained rounds (test-selected); 3 rounds x 2 messages
    assert (a["final"], a["best"], a["best-round"]) == (0.7, 0.8, 2)
    assert a["kib-up"] == 3 * 4096 / 6 / 1024 and a["kib-down"] == 3 * 8192 / 6 / 1024
    assert a["s-per-round"] == 2.0 and a["strategy"] == "fedavg" and a["rounds"] == 3


def test_table_names_differing_keys_only(two_runs: tuple[Path, Path]) -> None:
    runs = [Run.load(str(d)) for d in two_runs]
    assert differing_keys(runs) == ["client.trainer", "strategy"]  # run-name/output-dir ignored
    lines = table(runs).splitlines()
    assert lines[0].split()[:5] == ["run", "strategy", "rounds", "final", "best"]
    assert "best (test-selected)" in lines[0]
    assert lines[1].split()[:6] == ["a", "fedavg", "3", "0.7000", "0.8000", "(r2)"]
    assert lines[1].endswith('client.trainer="fo" strategy="fedavg"')
    assert lines[2].split()[:8] == ["b", "zo-seed", "2", "0.4000", "0.4000", "(r2)", "0.2", "0.5"]


def test_cli_prints_the_table_and_writes_the_overlay(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plots" / "cmp.png"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and printed[-1] == f"overlay plot: {out}"
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_a_directory_without_results_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().out == (f"fedzg compare: {tmp_path / 'empty'} is not a run's results "
                                       "directory (needs config.json and metrics.jsonl)\n")
    assert not (tmp_path / "x.png").exists()


def test_compare_reads_a_real_run(run_config: dict[str, Any], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:

    from fedapp.harness import InProcessGrid as FakeGrid
    from flwr.app import Context, RecordDict

    from fedapp.client_app import app as client_app
    from fedapp.server_app import main as server_main

    def serve(cfg: dict[str, Any]) -> Path:
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg)
        server_main(FakeGrid(client_app, cfg, 2), context)
        return Path(cfg["output-dir"]) / cfg["run-name"]

    cfg = {**run_config, "data.dataset": "digits", "num-server-rounds": 2, "client.lr": 0.1,
           "server.fraction-evaluate": 0.0}
    one = serve({**cfg, "run-name": "lr01"})
    two = serve({**cfg, "run-name": "lr02", "client.lr": 0.2})
    assert main(["compare", str(one), str(two), "--out", str(tmp_path / "c.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("lr01") and lines[1].endswith("client.lr=0.1")
    assert lines[2].startswith("lr02") and lines[2].endswith("client.lr=0.2")
    saved = json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"{saved['accuracy']:.4f}" in lines[1]
