"""Real deployment on loopback: a SuperLink and three SuperNodes as processes (slow).

One module-scoped deployment serves every test, as a user would run it on real
machines: TLS with a private CA and SuperNode authentication (keys registered
with ``flwr supernode register``). The tests run in file order and the last one
kills a SuperNode. Every process is started in its own process group and ended
by :meth:`bench.deployment.Deployment.stop`; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA_CACHE, DEPLOY_TRAINERS, ROOT

from bench.deployment import BIN, Deployment, cmdline, node_configs
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow

TRAINERS = DEPLOY_TRAINERS
NAMES = [f"node-{i}" for i in range(len(TRAINERS))]
TIMING = ("wall-s", "elapsed-s", "train-phase-s", "evaluate-phase-s")


def run_config(out: Path, name: str, extra: str = "") -> str:
    return (
        f'output-dir="{out}" run-name="{name}" data.cache-dir="{DATA_CACHE}" num-server-rounds=2 '
        f'data.dataset="digits" data.partition="iid" client.lr=0.1 client.local-epochs=2 '
        f"server.min-available-nodes={len(TRAINERS)} timeouts.min-nodes=120.0 {extra}"
    ).strip()


def wait_for(ok: Callable[[], bool], timeout: float, what: str, dep: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout:g} s\n{dep.tails()}")


def rows_so_far(directory: Path) -> list[dict[str, Any]]:
    try:
        return read_rounds(directory)
    except (OSError, json.JSONDecodeError):
        return []


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with Deployment(tmp_path_factory.mktemp("deploy"), tls=True, auth=True) as deployment:
        deployment.make_certs([*NAMES, "stranger"])
        deployment.start_superlink()
        for name, node in zip(NAMES, node_configs(TRAINERS), strict=True):
            deployment.register(deployment.certs / f"{name}.pub")
            deployment.add_supernode(name, node, key=deployment.certs / name)
        deployment.wait_for_nodes(len(TRAINERS), timeout=120)
        yield deployment
    print("peak RSS (MiB, process group):", deployment.peak_memory_mib())


def test_tls_run_with_authenticated_nodes_completes(dep: Deployment, tmp_path: Path) -> None:
    entry, log = dep.run(run_config(tmp_path, "tls"), timeout=420)
    assert entry["status"] == "finished:completed", log[-3000:] + dep.tails()
    rows = read_rounds(tmp_path / "tls")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == len(TRAINERS) and r["failed-train"] == 0 for r in rows[1:])
    assert all(r["bytes-up"] > 0 and r["bytes-down"] > r["bytes-up"] for r in rows[1:])
    assert rows[-1]["accuracy"] > 0.3  # chance is 0.1
    for name in ("config.json", "metrics.jsonl", "model.pt", "curves.png", "clients.json"):
        assert (tmp_path / "tls" / name).is_file(), name
    clients = json.loads((tmp_path / "tls" / "clients.json").read_text())
    assert sorted(clients) == [str(i) for i in range(len(TRAINERS))]


def test_unregistered_node_is_refused(dep: Deployment) -> None:
    stranger = dep.add_supernode(
        "stranger", node_configs(["fo"])[0], key=dep.certs / "stranger"
    )
    stranger.popen.wait(timeout=90)
    # Flower reports its exit code 305 (SuperNode could not be activated) and exits non-zero
    assert stranger.popen.returncode != 0 and "Exit Code: 305" in stranger.tail(), stranger.tail()
    assert dep.online_nodes() == len(TRAINERS)


def test_client_without_the_ca_cannot_connect(dep: Deployment, tmp_path: Path) -> None:
    # A SuperNode with the system CAs only (the private CA missing) fails the handshake
    no_ca = dep.add_supernode(
        "no-ca", node_configs(["fo"])[0], key=dep.certs / "node-0",
        root_certificates=Path("/etc/ssl/certs/ca-certificates.crt"),
        extra=["--max-retries", "1", "--max-wait-time", "10"],
    )
    no_ca.popen.wait(timeout=120)
    assert no_ca.popen.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in no_ca.tail(20000) or "SSL" in no_ca.tail(20000)
    # and the CLI without the CA is refused as well
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bare"\n\n[superlink.bare]\naddress = "127.0.0.1:{dep.port}"\n'
    )
    bare = subprocess.run(
        [str(BIN / "flwr"), "list", "bare", "--format", "json"],
        cwd=ROOT, env={**dep.env, "FLWR_HOME": str(home)}, capture_output=True, text=True,
        timeout=120,
    )
    assert bare.returncode != 0 or '"success": false' in bare.stdout


def test_killed_serverapp_resumes_without_duplicated_or_missing_rounds(
    dep: Deployment, tmp_path: Path
) -> None:
    cfg = run_config(tmp_path, "resume", "server.fraction-evaluate=0.0")
    first = dep.start_run(cfg, tmp_path / "first.log")
    out = tmp_path / "resume"
    wait_for(lambda: len(rows_so_far(out)) >= 2, 300, "round 1 of the first run", dep)
    killed = dep.serverapp_pids()
    assert killed, "no flwr-serverapp process found"
    for pid in killed:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    before = rows_so_far(out)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    run_id = dep.run_id((tmp_path / "first.log").read_text())
    dep.flwr("stop", run_id, "fedzg", check=False)
    assert [r["round"] for r in before] == [0, 1]
    entry, log = dep.run(f"{cfg} resume=true", timeout=420)
    assert entry["status"] == "finished:completed", log[-3000:]
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [0, 1, 2]  # none duplicated, none missing
    assert rows[:2] == before  # the rows of the killed run are kept as written
    assert "resuming from" in log and "after round 1" in log
    assert rows[-1]["accuracy"] > 0.3


def test_killed_supernode_is_counted_and_the_run_finishes(
    dep: Deployment, tmp_path: Path
) -> None:
    # min-available-nodes 2: the run goes on with the two survivors
    cfg = run_config(tmp_path, "fail", "server.fraction-evaluate=0.0").replace(
        f"server.min-available-nodes={len(TRAINERS)}", "server.min-available-nodes=2"
    ) + " timeouts.train=150.0"
    victim = next(p for p in dep.procs if p.name == NAMES[-1])
    run = dep.start_run(cfg, tmp_path / "fail.log")
    # kill it once it has taken this run's round-1 train message and its ClientApp runs
    log = tmp_path / "fail.log"
    wait_for(lambda: "Successfully started run" in log.read_text(), 120, "run start", dep)
    run_id = dep.run_id(log.read_text())

    def training() -> bool:
        text = victim.log.read_text(errors="replace")
        start = text.find(f"[RUN {run_id}]")
        took = start >= 0 and "Receiving: train" in text[start:]
        return took and any("flwr-clientapp" in cmdline(p) for p in victim.tree())

    wait_for(training, 300, "node training in round 1", dep)
    t_kill = time.monotonic()
    victim.kill(signal.SIGKILL)
    wait_for(lambda: len(rows_so_far(tmp_path / "fail")) >= 2, 300, "round 1 to end", dep)
    detected_s = time.monotonic() - t_kill
    run.wait(timeout=400)
    entry = dep.run_entry(run_id)
    assert entry["status"] == "finished:completed", log.read_text()[-3000:]
    rows = read_rounds(tmp_path / "fail")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["failed-train"] >= 1 and rows[1]["clients"] == len(TRAINERS) - 1
    assert all(r["clients"] >= len(TRAINERS) - 1 for r in rows[1:])
    assert rows[1]["train-phase-s"] < 150 + 10  # bounded by timeouts.train (+ one poll)
    print(f"dead node: round 1 ended {detected_s:.1f} s after the kill; "
          f"train phases {[r['train-phase-s'] for r in rows[1:]]} s; "
          f"failed-train per round {[r['failed-train'] for r in rows[1:]]}")
