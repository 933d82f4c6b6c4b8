"""Multi-host deployment in network namespaces, one node's link limited by tbf (slow).

The SuperLink (and the ``flwr`` CLI) run in host 0's namespace, one SuperNode in
each of hosts 1-3, and their traffic crosses veth pairs and a bridge only
(:mod:`bench.netns`). Node 3's egress is limited to 2 Mbit/s. Skipped, with the
reason, only where namespaces cannot be created (not root, no iproute2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATA_CACHE, DEPLOY_TRAINERS

from bench.deployment import Deployment, node_configs
from bench.netns import Lab, namespaces_available
from fedapp.results import read_rounds

pytestmark = pytest.mark.slow

TRAINERS = DEPLOY_TRAINERS
LIMITED = len(TRAINERS)  # host index of the node whose link gets tbf


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = namespaces_available()
    if reason:
        pytest.skip(reason)
    with Lab(hosts=1 + len(TRAINERS)) as lab:
        yield lab


def test_run_across_namespaces_with_a_limited_link(lab: Lab, tmp_path: Path) -> None:
    lab.limit(LIMITED, "2mbit")
    assert "tbf" in lab.qdisc(LIMITED)
    with Deployment(tmp_path / "work", superlink_netns=lab.ns(0), dial_host=lab.addr(0)) as dep:
        dep.start_superlink(host="0.0.0.0")
        for i, node in enumerate(node_configs(TRAINERS), start=1):
            dep.add_supernode(f"node-{i}", node, netns=lab.ns(i))
        dep.wait_for_nodes(len(TRAINERS), timeout=120)
        before = [lab.counters(i) for i in range(1, 1 + len(TRAINERS))]
        entry, log = dep.run(
            f'output-dir="{tmp_path}" run-name="netns" data.cache-dir="{DATA_CACHE}" '
            f'num-server-rounds=2 data.dataset="digits" data.partition="iid" client.lr=0.1 '
            f"server.fraction-evaluate=0.0 server.min-available-nodes={len(TRAINERS)}",
            timeout=420,
        )
        after = [lab.counters(i) for i in range(1, 1 + len(TRAINERS))]
        assert entry["status"] == "finished:completed", log[-3000:] + dep.tails()
    rows = read_rounds(tmp_path / "netns")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == len(TRAINERS) and r["failed-train"] == 0 for r in rows[1:])
    # every node's payload crossed its own veth: the wire carries at least what the
    # metrics count (plus HTTP framing, polling and heartbeats)
    up = sum(r["bytes-up"] for r in rows)
    down = sum(r["bytes-down"] for r in rows)
    rx = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    tx = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    assert all(t >= up / len(TRAINERS) for t in tx), (tx, up)
    assert all(r >= down / len(TRAINERS) for r in rx), (rx, down)
    assert rows[1]["bytes-up"] == rows[2]["bytes-up"] and rows[1]["bytes-down"] == rows[2]["bytes-down"]
    print(json.dumps({"metrics-bytes-up": up, "metrics-bytes-down": down,
                      "veth-tx-per-node": tx, "veth-rx-per-node": rx,
                      "round-wall-s": [r["wall-s"] for r in rows[1:]]}))
