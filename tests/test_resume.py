"""Resume after a crash, in process: a run killed mid-round continues from its checkpoint.

The deployment version (a real ServerApp process killed and resumed) is in
``tests/test_deployment.py``; here the crash is an exception from the Grid, so
the interrupted-and-resumed run can be compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedapp.checkpoint import CHECKPOINT_NAME
from fedapp.client_app import app as client_app
from fedapp.config import ConfigError
from fedapp.harness import InProcessGrid
from fedapp.results import read_rounds
from fedapp.server_app import main
from fedapp.wire.common import SERVER_ROUND

TIMING = ("wall-s", "elapsed-s", "train-phase-s", "evaluate-phase-s")


class Crash(Exception):
    """Stands in for the ServerApp process dying."""


class CrashingGrid(InProcessGrid):
    """Raises on the ``crash_at``-th ``send_and_receive`` call (1-based)."""

    def __init__(self, *args: Any, crash_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls, self.crash_at = 0, crash_at

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(f"killed in call {self.calls}")
        return super().send_and_receive(messages, timeout=timeout)


def serve(cfg: dict[str, Any], grid: InProcessGrid) -> Path:
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return Path(cfg["output-dir"]) / cfg["run-name"]


def untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def config_without_output_dir(run: Path) -> dict[str, Any]:
    saved = json.loads((run / "config.json").read_text())
    del saved["config"]["output-dir"]
    return saved


def rounds_sent(grid: InProcessGrid) -> list[int]:
    return [
        int(m.content["config"][SERVER_ROUND])
        for m in grid.sent
        if m.metadata.message_type == "train"
    ]


@pytest.fixture
def small(run_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **run_config,
        "data.dataset": "digits",
        "data.partition": "dirichlet",
        "server.fraction-train": 0.67,  # 2 of 3 nodes: node sampling must resume identically
        "num-server-rounds": 3,
        "client.lr": 0.1,
    }


def test_killed_run_resumes_to_identical_results(small: dict[str, Any], tmp_path: Path) -> None:
    # Prepare: an uninterrupted reference run, and a run that dies in round 3's training
    ref_cfg = {**small, "output-dir": str(tmp_path / "ref")}
    ref = serve(ref_cfg, InProcessGrid(client_app, ref_cfg, 3))
    crash = CrashingGrid(client_app, small, 3, crash_at=5)  # calls: r1 train, r1 eval, r2 ..., r3 train
    with pytest.raises(Crash):
        serve(small, crash)
    out = Path(small["output-dir"]) / small["run-name"]
    assert [r["round"] for r in read_rounds(out)] == [0, 1, 2]
    # Execute: resume on fresh nodes (deployment starts a new ClientApp process per message)
    again = InProcessGrid(client_app, {**small, "resume": True}, 3)
    serve({**small, "resume": True}, again)
    # Assert: rounds 3 only were run, with their true numbers; results equal the reference
    assert set(rounds_sent(again)) == {3}
    assert untimed(read_rounds(out)) == untimed(read_rounds(ref))
    assert config_without_output_dir(out) == config_without_output_dir(ref)
    assert (out / "clients.json").read_text() == (ref / "clients.json").read_text()
    mine = torch.load(out / CHECKPOINT_NAME, weights_only=False)
    theirs = torch.load(ref / CHECKPOINT_NAME, weights_only=False)
    assert mine["round"] == theirs["round"] == 3
    for key, value in theirs["state_dict"].items():
        assert torch.equal(mine["state_dict"][key], value), key
    assert read_rounds(out)[-1]["elapsed-s"] >= read_rounds(out)[2]["elapsed-s"]


def test_resume_from_a_path_with_more_rounds(small: dict[str, Any], tmp_path: Path) -> None:
    first = serve({**small, "num-server-rounds": 1}, InProcessGrid(client_app, small, 3))
    cfg = {**small, "num-server-rounds": 2, "run-name": "longer", "resume": str(first)}
    grid = InProcessGrid(client_app, cfg, 3)
    out = serve(cfg, grid)
    assert [r["round"] for r in read_rounds(out)] == [0, 1, 2]
    assert set(rounds_sent(grid)) == {2}


def test_resuming_a_finished_run_runs_no_round(small: dict[str, Any]) -> None:
    out = serve(small, InProcessGrid(client_app, small, 3))
    before = untimed(read_rounds(out))
    grid = InProcessGrid(client_app, {**small, "resume": True}, 3)
    serve({**small, "resume": True}, grid)
    assert grid.sent == [] and untimed(read_rounds(out)) == before


def test_resume_refuses_a_different_experiment(small: dict[str, Any]) -> None:
    serve({**small, "num-server-rounds": 1}, InProcessGrid(client_app, small, 3))
    cfg = {**small, "resume": True, "client.lr": 0.2}
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in client\.lr \(0\.1 -> 0\.2\)"):
        serve(cfg, InProcessGrid(client_app, cfg, 3))


def test_resume_without_a_checkpoint_says_so(small: dict[str, Any]) -> None:
    cfg = {**small, "resume": True}
    with pytest.raises(ConfigError, match="no checkpoint at"):
        serve(cfg, InProcessGrid(client_app, cfg, 3))


def test_a_crash_while_saving_leaves_the_previous_checkpoint(
    small: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = serve({**small, "num-server-rounds": 1}, InProcessGrid(client_app, small, 3))
    good = (out / CHECKPOINT_NAME).read_bytes()

    real_replace = os.replace

    def die_on_checkpoint(src: str, dst: Any) -> None:
        if Path(dst).name == CHECKPOINT_NAME:
            raise Crash("killed before the checkpoint's rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_on_checkpoint)
    cfg = {**small, "num-server-rounds": 2, "resume": True}
    with pytest.raises(Crash):
        serve(cfg, InProcessGrid(client_app, cfg, 3))
    assert (out / CHECKPOINT_NAME).read_bytes() == good
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_error_replies_do_not_break_resume(small: dict[str, Any]) -> None:
    drop: Any = lambda m: isinstance(m, Message) and m.metadata.dst_node_id == 101
    serve({**small, "num-server-rounds": 1}, InProcessGrid(client_app, small, 3, drop=drop))
    cfg = {**small, "num-server-rounds": 2, "resume": True}
    out = serve(cfg, InProcessGrid(client_app, cfg, 3))
    assert [r["round"] for r in read_rounds(out)] == [0, 1, 2]


def test_zo_seed_resume_drops_rows_and_history_past_the_checkpoint(
    small: dict[str, Any], tmp_path: Path
) -> None:
    # Prepare: zo-seed keeps its history in journal.jsonl, not in the checkpoint. A crash
    # after round 3's lines were appended but before its checkpoint (here: a stale round-3
    # row and history entry, then a torn line, in each file) must not leak into the resume
    cfg = {**small, "strategy": "zo-seed", "client.trainer": "zo", "zo.local-steps": 4,
           "zo.lr": 1e-3, "server.fraction-evaluate": 0.67}
    ref_cfg = {**cfg, "output-dir": str(tmp_path / "ref")}
    ref = serve(ref_cfg, InProcessGrid(client_app, ref_cfg, 3))
    with pytest.raises(Crash):
        serve(cfg, CrashingGrid(client_app, cfg, 3, crash_at=5))
    out = Path(cfg["output-dir"]) / cfg["run-name"]
    for name, stale in (("metrics.jsonl", read_rounds(ref)[3]),
                        ("journal.jsonl", {"round": 3, "kind": "zo-history", "seed_base": 1,
                                           "steps": []})):
        with (out / name).open("a") as f:
            f.write(json.dumps(stale) + "\n" + '{"round": 4, "acc')
    # Execute: resume on fresh nodes, which rebuild θ^t from the history alone
    again_cfg = {**cfg, "resume": True}
    serve(again_cfg, InProcessGrid(client_app, again_cfg, 3))
    # Assert: the same rows, history and model as the uninterrupted run (bytes down aside: the
    # resumed server does not know which rounds the nodes hold, so it sends them more history)
    def same(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "bytes-down"} for r in untimed(rows)]

    assert same(read_rounds(out)) == same(read_rounds(ref))
    assert (out / "journal.jsonl").read_text() == (ref / "journal.jsonl").read_text()
    mine = torch.load(out / CHECKPOINT_NAME, weights_only=False)
    theirs = torch.load(ref / CHECKPOINT_NAME, weights_only=False)
    for key, value in theirs["state_dict"].items():
        assert torch.equal(mine["state_dict"][key], value), key
