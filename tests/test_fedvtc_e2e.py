"""FedVTC end to end through the real ``flwr run`` CLI (slow): two architectures, all phases."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA_CACHE

from bench.flwr_cli import FlwrCli
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow


def test_fedvtc_run_with_two_architectures(flwr: FlwrCli, tmp_path: Path) -> None:
    run_config = (
        f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" run-name="vtc" strategy="fedvtc" '
        f'num-server-rounds=2 data.dataset="digits" data.alpha=1.0 client.local-epochs=2 '
        f'model.clients="vtc-cnn-0.5,vtc-cnn-1"'
    )
    entry, log = flwr.run(run_config, "num-supernodes=3 client-resources-num-cpus=1", timeout=300)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "vtc")
    assert [r["round"] for r in rows] == [0, 1, 2]
    last = rows[-1]
    assert (last["clients"], last["failed-train"], last["rejected"]) == (3, 0, 0)
    assert {"accuracy-vtc-cnn-0.5", "accuracy-vtc-cnn-1"} <= set(last)
    assert "vtc-loss" in last and "finetune-loss" in last
    assert last["accuracy"] > 0.2 and last["accuracy-local"] > 0.2  # chance is 0.1
    assert "FedVTC round 2" in log
