"""HERON-SFL end to end through the real ``flwr run`` CLI (slow: Ray simulation, 3 nodes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA_CACHE

from bench.flwr_cli import FlwrCli
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow


def test_heron_sfl_run_completes_with_zo_clients(flwr: FlwrCli, tmp_path: Path) -> None:
    config = (
        f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" run-name="heron" num-server-rounds=2 '
        'strategy="heron-sfl" client.trainer="split-zo" data.dataset="digits" '
        'data.partition="iid" heron.batch-size=32 heron.client-lr=0.001 heron.server-lr=0.003'
    )
    entry, log = flwr.run(config, "num-supernodes=3 client-resources-num-cpus=1", timeout=300)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "heron")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert (r["clients"], r["failed-train"], r["rejected"]) == (3, 0, 0)
        assert r["client-backward-per-step"] == 0 and r["server-steps"] > 0
        assert r["bytes-up"] > r["bytes-down"]  # smashed data dominate the uplink
    assert rows[-1]["accuracy"] > 0.3
    assert (tmp_path / "heron" / "model.pt").is_file()
    assert "heron-sfl client 0:" in log
