"""FedGen end to end through the real ``flwr run`` CLI in Ray simulation (slow: ~1 minute)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DATA_CACHE

from bench.flwr_cli import FlwrCli
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow


def test_mixed_fo_zo_fedgen_run_trains_the_generator_and_completes(flwr: FlwrCli, tmp_path: Path) -> None:
    entry, log = flwr.run(
        f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" run-name="fedgen" strategy="fedgen" '
        'num-server-rounds=2 data.dataset="digits" data.partition="iid" client.lr=0.05 '
        'client.momentum=0.0 client.local-steps=20 fedgen.generator-steps=10 '
        'client.trainer="mixed" client.zo-fraction=0.34 zo.local-steps=5',  # partition 0 runs ZO
        "num-supernodes=3 client-resources-num-cpus=1",
        timeout=300,
    )
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "fedgen")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 3 and r["rejected"] == 0 for r in rows[1:])
    assert rows[2]["bytes-down"] > rows[1]["bytes-down"]  # the generator travels from round 2
    assert rows[-1]["accuracy"] > 0.3  # chance is 0.1
    assert "FedGen generator (round 2, 3 heads)" in log
    assert "Client partition 0 (zo, " in log and "Client partition 1 (fo, " in log
    saved = torch.load(tmp_path / "fedgen" / "model.pt", weights_only=False)
    assert saved["strategy"]["round"] == 2 and saved["strategy"]["optimizer"]["state"]
