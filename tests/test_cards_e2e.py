"""Strategies chosen by name alone through the real ``flwr run`` CLI (slow: ~1 minute each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA_CACHE

from bench.flwr_cli import FlwrCli
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow

FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"


@pytest.mark.parametrize("strategy", ["zo-seed", "heron-sfl"])
def test_by_name_run_takes_its_trainer_from_the_card(
    flwr: FlwrCli, tmp_path: Path, strategy: str
) -> None:
    config = (f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" num-server-rounds=2 '
              f'run-name="byname" strategy="{strategy}"')
    entry, log = flwr.run(config, FEDERATION, timeout=300)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "byname")
    assert all(r["clients"] == 3 and r["failed-train"] == r["failed-evaluate"] == r["rejected"] == 0 for r in rows[1:])
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    saved = json.loads((tmp_path / "byname" / "config.json").read_text())
    assert saved["from-card"]["client.trainer"] == f"card:{strategy}"


def test_a_bad_combination_fails_the_run_in_one_line(flwr: FlwrCli, tmp_path: Path) -> None:
    config = (f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" run-name="bad" '
              'strategy="heron-sfl" client.trainer="zo"')
    entry, log = flwr.run(config, FEDERATION, timeout=300)
    assert entry["status"] == "finished:failed"
    assert "strategy 'heron-sfl' cannot use client.trainer 'zo' (allowed: split-fo, split-zo)" in log
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
