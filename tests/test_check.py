"""Preflight (``python -m fedapp check``) and the ``preset`` key, server and clients alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import DATA_CACHE, ROOT, pyproject_run_config
from fedapp.harness import InProcessGrid as FakeGrid
from flwr.app import Context, RecordDict

from fedapp.check import main, parse_overrides
from fedapp.client_app import app as client_app
from fedapp.config import ConfigError, load_config
from fedapp.defaults import apply_preset, read_preset
from fedapp.results import read_rounds
from fedapp.server_app import main as server_main


def verdict(capsys: pytest.CaptureFixture[str], *run: str, nodes: tuple[str, ...] = (),
            supernodes: int = 0, data: bool = False) -> tuple[int, str]:
    rc = main(list(run), list(nodes), num_supernodes=supernodes, data=data)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("fedzg check: "), out  # exactly one line
    return rc, out.strip().removeprefix("fedzg check: ")


@pytest.mark.parametrize(
    "args",
    [
        ['num-server-rounds=3 client.lr=0.1 strategy="fedprox" data.partition="iid"'],
        ["seed=7", 'run-name="a b" client.fault-partitions="0,1"'],
        ["zo.exact-restore=true resume='/tmp/x' round-timeout=60"],
        [str(ROOT / "fedapp" / "presets" / "smoke.toml")],
    ],
)
def test_overrides_parse_exactly_as_flower_parses_them(args: list[str]) -> None:
    from flwr.common.config import parse_config_args  # Flower internal: the reference

    assert parse_overrides(args) == parse_config_args(args)


def test_unknown_key_is_named_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    rc, line = verdict(capsys, "data.alpah=0.3")
    assert rc == 1
    assert line.startswith("invalid run config: unknown key 'data.alpah' (did you mean 'data.alpha'?)")


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        ('num-server-rounds="2"', "num-server-rounds = '2' is invalid"),
        ('resume="true"', "use the boolean true"),
        ('run-name=".."', "a name of dots only"),
        ('strategy="fedavg" client.trainer="split-zo"', "cannot use client.trainer 'split-zo'"),
        ('preset="nope"', "preset = 'nope' is invalid: no such preset (available: fedgen-mnist,"),
        ("seed=1.2.3", "is not 'key=value ...' with TOML values"),
        ("num-server-rounds= 3", "'num-server-rounds= 3' is not key=value (flwr run would silently"),
    ],
)
def test_bad_run_config_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run: str, expected: str
) -> None:
    rc, line = verdict(capsys, f'output-dir="{tmp_path}" {run}')
    assert rc == 1 and expected in line, line


def test_good_config_exits_0_and_checks_data_and_nodes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = f'output-dir="{tmp_path}" data.cache-dir="{DATA_CACHE}" data.dataset="digits"'
    rc, line = verdict(capsys, base, nodes=("partition-id=1 num-partitions=2 trainer=\"zo\"",),
                       supernodes=3, data=True)
    assert rc == 0, line
    assert line == (f"ok: fedavg (fo) on digits, 10 rounds; results in {tmp_path}/default "
                    "(new run); 4 node config(s) checked")


def test_node_config_and_partition_problems_name_the_node(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, line = verdict(capsys, f'output-dir="{tmp_path}"', nodes=("partition-id=2 num-partitions=2",))
    assert rc == 1 and line == ("node {'partition-id': 2, 'num-partitions': 2}: invalid node config: "
                                "partition-id 2 must be < num-partitions 2")
    rc, line = verdict(capsys, f'output-dir="{tmp_path}" data.dataset="digits" data.alpha=0.01 '
                       f'data.min-partition-size=400 data.cache-dir="{DATA_CACHE}"',
                       supernodes=4, data=True)
    assert rc == 1 and "cannot partition 'digits'" in line, line


def test_existing_run_and_resume_are_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "metrics.jsonl").write_text("{}\n")
    rc, line = verdict(capsys, f'output-dir="{tmp_path}"')
    assert rc == 1 and "already holds a run (metrics.jsonl)" in line
    rc, line = verdict(capsys, f'output-dir="{tmp_path}" overwrite=true')
    assert rc == 0 and f"results in {tmp_path}/default (replaces the existing run)" in line
    rc, line = verdict(capsys, f'output-dir="{tmp_path}" resume=true')
    assert rc == 1 and line == f"resume: no checkpoint at {tmp_path}/default/model.pt (run at least one round first)"


def test_check_starts_no_ray(tmp_path: Path) -> None:
    code = ("import sys; from fedapp.__main__ import main; "
            f"rc = main(['check', '-c', 'output-dir=\"{tmp_path}\" data.dataset=\"digits\"', "
            "'--num-supernodes', '2']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray',))); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "HF_DATASETS_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")},
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("fedzg check: ok: fedavg (fo) on digits") and lines[1] == "[]"


# --- the preset key ------------------------------------------------------------------------


def test_preset_values_lie_under_the_users_overrides() -> None:
    defaults = pyproject_run_config()
    preset = read_preset("fedgen-mnist")
    cfg = load_config({**defaults, "preset": "fedgen-mnist", "num-server-rounds": 12})
    assert (cfg.num_server_rounds, cfg.strategy, cfg.client.lr) == (12, "fedgen", preset["client.lr"])
    assert cfg.preset == "fedgen-mnist" and cfg.data.alpha == preset["data.alpha"]


def test_a_default_valued_override_is_exact_on_the_server_and_refused_if_clients_differ() -> None:
    defaults = pyproject_run_config()
    assert defaults["num-server-rounds"] == 10 and read_preset("fedgen-mnist")["num-server-rounds"] == 30
    submitted = {"preset": "fedgen-mnist", "num-server-rounds": 10}
    run_config = {**defaults, **submitted}
    # the clients (no overrides known) take the preset's 30; the server knows 10 was submitted
    assert load_config(run_config).num_server_rounds == 30
    assert load_config(run_config, submitted).num_server_rounds == 10  # server-side only: allowed
    clash = {"preset": "fedgen-mnist", "client.lr": defaults["client.lr"]}
    with pytest.raises(ConfigError, match=r"client.lr = 0.05 equals its pyproject default, which the "
                                          r"ClientApps cannot tell apart from not setting it"):
        load_config({**defaults, **clash}, clash)
    # FedZGE clients read num-server-rounds (client-eval = "final"), so there it must agree
    zge = {"preset": "fedzge-smoke", "num-server-rounds": 10, "fedzge.client-eval": "final"}
    if apply_preset({**defaults, **zge})["num-server-rounds"] != 10:
        with pytest.raises(ConfigError, match="num-server-rounds = 10 equals its pyproject default"):
            load_config({**defaults, **zge}, zge)


class SubmittedGrid(FakeGrid):
    """FakeGrid with Flower's ``Run``: the overrides the user submitted."""

    def __init__(self, *args: Any, overrides: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._overrides = overrides

    @property
    def run(self) -> Any:
        return SimpleNamespace(override_config=self._overrides)


def test_server_and_clients_run_a_preset_with_overrides(run_config: dict[str, Any]) -> None:
    # Prepare: --run-config 'preset="smoke" num-server-rounds=1 ...' as Flower would fuse it
    submitted = {"preset": "smoke", "num-server-rounds": 1, "output-dir": run_config["output-dir"],
                 "data.cache-dir": run_config["data.cache-dir"], "server.fraction-evaluate": 0.0}
    fused = {**pyproject_run_config(), **submitted}
    grid = SubmittedGrid(client_app, fused, 2, overrides=submitted)
    # Execute
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=fused))
    # Assert: the preset's run-name, dataset and lr under the user's rounds, recorded in config.json
    out = Path(run_config["output-dir"]) / "smoke"
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["preset"] == "smoke" and saved["num-server-rounds"] == 1
    assert saved["data"]["dataset"] == "digits" and saved["client"]["lr"] == 0.1
    assert [r["round"] for r in read_rounds(out)] == [0, 1]
    train = [m for m in grid.received if m.metadata.message_type == "train"]
    assert train and not any(m.has_error() for m in train)  # clients resolved the same preset
