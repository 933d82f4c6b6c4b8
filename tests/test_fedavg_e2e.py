"""End to end through the real ``flwr run`` CLI in Ray simulation (slow: ~2 minutes).

Each session gets its own Flower home, SuperLink ports and Ray temp dir, runs with
runtime dependency installation disabled, and kills the managed SuperLink (which
outlives ``flwr run``) by PID at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA_CACHE

from bench.flwr_cli import FlwrCli
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow

FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"


def run(cli: FlwrCli, run_config: str) -> tuple[dict[str, Any], str]:
    return cli.run(run_config, FEDERATION, timeout=300)


def _config(out: Path, cache: Path, extra: str) -> str:
    return (
        f'output-dir="{out}" data.cache-dir="{cache}" num-server-rounds=2 '
        f'data.dataset="digits" data.partition="iid" client.lr=0.1 client.local-epochs=2 {extra}'
    )


def test_fedprox_run_rejects_a_nan_client_and_completes(flwr: FlwrCli, tmp_path: Path) -> None:
    extra = 'run-name="nan" strategy="fedprox" client.fault="nan" client.fault-partitions="1"'
    entry, log = run(flwr, _config(tmp_path, DATA_CACHE, extra))
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "nan")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["rejected"] == 1 and r["clients"] == 2 for r in rows[1:])
    assert all(r["bytes-up"] > 0 and r["bytes-down"] > r["bytes-up"] for r in rows[1:])
    assert rows[-1]["accuracy"] > 0.3  # chance is 0.1
    for name in ("config.json", "metrics.jsonl", "model.pt", "curves.png", "clients.json"):
        assert (tmp_path / "nan" / name).is_file(), name
    assert "round 2/2" in log and "Rejected train reply from node" in log and "(partition 1)" in log


def test_bad_config_value_stops_the_run_with_one_line(flwr: FlwrCli, tmp_path: Path) -> None:
    t0 = time.monotonic()
    entry, log = run(flwr, _config(tmp_path, DATA_CACHE, 'run-name="bad" data.alpha=-1.0'))
    assert entry["status"] == "finished:failed"
    expected = "invalid run config: data.alpha = -1.0 is invalid: Input should be greater than 0"
    assert expected in entry["status-details"]
    assert f"fedzg: {expected}" in log
    assert not (tmp_path / "bad").exists()
    assert time.monotonic() - t0 < 120


def test_a_silent_node_is_dropped_at_the_phase_timeouts(flwr: FlwrCli, tmp_path: Path) -> None:
    """client.fault = "silent" under Ray: the node's replies come after the timeouts, uncounted.

    The sleeping node holds one of the Ray actors; the timeout leaves the other actor time
    for both good nodes' cold first calls on a shared machine. Client evaluation is off
    (each phase with a silent node lasts its whole timeout; test_liveness covers evaluate).
    """
    run_config = (
        f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" num-server-rounds=1 '
        'data.dataset="digits" data.partition="iid" run-name="silent" client.fault="silent" '
        'client.fault-partitions="1" timeouts.train=45.0 server.fraction-evaluate=0.0'
    )
    entry, log = run(flwr, run_config)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "silent")
    assert [(r["clients"], r["failed-train"]) for r in rows[1:]] == [(2, 1)]
    assert "train: 1 of 3 nodes did not answer" in log
