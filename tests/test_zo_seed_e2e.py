"""Zeroth-order clients end to end through the real ``flwr run`` CLI (slow: ~1-2 minutes).

A mixed FO/ZO FedAvg federation and a zo-seed federation, 3 simulated nodes, 2 rounds each.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA_CACHE

from bench.flwr_cli import FlwrCli
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow

FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"


def _config(out: Path, extra: str) -> str:
    return (
        f'output-dir="{out}" data.cache-dir="{DATA_CACHE}" num-server-rounds=2 '
        f'data.dataset="digits" data.partition="iid" zo.local-steps=5 zo.lr=0.001 '
        f'strategy-card=false {extra}'  # zo.lr = its global default, not the card's
    )


def test_mixed_fedavg_run_completes(flwr: FlwrCli, tmp_path: Path) -> None:
    extra = 'run-name="mixed" client.trainer="mixed" client.zo-fraction=0.34 client.lr=0.1'
    entry, log = flwr.run(_config(tmp_path, extra), FEDERATION, timeout=300)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "mixed")
    assert all(r["clients"] == 3 and r["rejected"] == 0 for r in rows[1:])
    assert rows[-1]["accuracy"] > 0.3  # chance is 0.1
    assert "(zo, fedgen-cnn)" in log and "(fo, fedgen-cnn)" in log


def test_zo_seed_run_completes_with_scalar_uploads(flwr: FlwrCli, tmp_path: Path) -> None:
    extra = 'run-name="zoseed" strategy="zo-seed" client.trainer="zo"'
    entry, log = flwr.run(_config(tmp_path, extra), FEDERATION, timeout=300)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "zoseed")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 3 and r["rejected"] == 0 and r["failed-train"] == 0 for r in rows[1:])
    assert all(0 < r["bytes-up"] / 3 < 2048 for r in rows[1:])  # per client per round
    assert rows[-1]["loss"] != rows[0]["loss"]
    assert "ZO-seed:" in log and "round 2/2" in log
