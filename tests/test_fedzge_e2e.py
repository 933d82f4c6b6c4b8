"""FedZGE end to end through the real ``flwr run`` CLI: three architectures (slow, ~1-2 min)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DATA_CACHE

from bench.flwr_cli import FlwrCli
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow


def test_fedzge_run_with_three_client_architectures(flwr: FlwrCli, tmp_path: Path) -> None:
    config = (
        f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" run-name="zge" strategy="fedzge" '
        'num-server-rounds=2 data.dataset="digits" data.partition="iid" model.name="mlp" '
        'model.clients="0:fedgen-cnn,1:mlp,2:cnn" fedzge.synthetic-samples=40 '
        'fedzge.num-directions=3 fedzge.latent-dim=16 fedzge.generator-width=8 '
        'fedzge.local-epochs=2 fedzge.batch-size=64 fedzge.server-steps=3 fedzge.distill-steps=3'
    )
    entry, log = flwr.run(config, "num-supernodes=3 client-resources-num-cpus=1", timeout=300)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(tmp_path / "zge")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert (r["clients"], r["failed-train"], r["rejected"], r["skipped"]) == (3, 0, 0, 0)
        assert r["bytes-down-per-client"] > 0 and r["bytes-up-per-client"] > 0
        assert r["client-acc-before"] > 0.1
    saved = torch.load(tmp_path / "zge" / "model.pt", weights_only=False)
    assert saved["strategy"]["round"] == 2 and saved["strategy"]["generator"]
    assert "round 2/2" in log
