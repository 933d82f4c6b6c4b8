"""Round latency: real deployment (SuperLink + SuperNode processes) vs Ray simulation.

    python -m bench.deploy_latency --nodes 10 --rounds 3

Runs the same experiment (the pyproject defaults unless ``--run-config`` adds
overrides) once through ``flwr run`` in simulation and once against a local
SuperLink with ``--nodes`` SuperNodes, side by side, and reports per run:

- the median round wall time (rounds 1..R; round 0 is the initial evaluation);
- the median train and evaluate phase times, and the clients' own compute
  (``train-s`` as the ClientApp measured it, FedAvg's weighted mean), so the rest
  of a phase is Flower's polling, message transport and the per-message
  ``flwr-clientapp`` process start;
- the cost of that process start alone (``python -c "import fedapp.client_app"``);
- peak RSS of the SuperLink and of each SuperNode, alone and with the processes
  they spawned.

Writes ``bench/results/deploy_latency.json``. The machine is shared: read ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.deployment import Deployment, node_configs
from bench.flwr_cli import ROOT, FlwrCli
from fedapp.results import read_rounds

RESULTS = ROOT / "bench" / "results"
TRAIN_S = re.compile(r"'train-s': '([0-9.e+-]+)'")


def client_train_s(log: str) -> list[float]:
    """FedAvg's aggregated ``train-s`` per round, from Flower's final summary in the log."""
    return [float(x) for x in TRAIN_S.findall(log)]


def summarise(rows: list[dict[str, Any]], log: str, wall_s: float) -> dict[str, Any]:
    rounds = rows[1:]
    train_s = client_train_s(log)
    return {
        "run-wall-s": round(wall_s, 1),
        "rounds": len(rounds),
        "round-s-median": round(statistics.median(r["wall-s"] for r in rounds), 2),
        "train-phase-s-median": round(statistics.median(r["train-phase-s"] for r in rounds), 2),
        "evaluate-phase-s-median": round(
            statistics.median(r["evaluate-phase-s"] for r in rounds), 2
        ),
        "client-train-s-median": round(statistics.median(train_s), 3) if train_s else None,
        "final-accuracy": round(rows[-1]["accuracy"], 4),
    }


def import_cost_s(repeats: int = 3) -> float:
    """Median wall time of starting a Python process that imports the ClientApp."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import fedapp.client_app"], cwd=ROOT, check=True)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-config", default="", help="extra overrides for both runs")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fedzg-latency-"))
    base = (f'output-dir="{work}" num-server-rounds={args.rounds} '
            f"server.min-available-nodes={args.nodes} {args.run_config}").strip()
    report: dict[str, Any] = {"nodes": args.nodes, "rounds": args.rounds,
                              "run-config": args.run_config}

    with FlwrCli() as cli:
        t0 = time.monotonic()
        entry, log = cli.run(f'{base} run-name="simulation"',
                             f"num-supernodes={args.nodes} client-resources-num-cpus=1",
                             timeout=3600)
        assert entry["status"] == "finished:completed", log[-3000:]
        report["simulation"] = summarise(read_rounds(work / "simulation"), log,
                                         time.monotonic() - t0)

    with Deployment(work / "deployment") as dep:
        dep.start_superlink()
        for i, node in enumerate(node_configs(["fo"] * args.nodes)):
            dep.add_supernode(f"node-{i}", node)
        dep.wait_for_nodes(args.nodes, timeout=300)
        t0 = time.monotonic()
        entry, log = dep.run(f'{base} run-name="deployment"', timeout=3600)
        assert entry["status"] == "finished:completed", log[-3000:]
        report["deployment"] = summarise(read_rounds(work / "deployment"), log,
                                         time.monotonic() - t0)
        report["peak-rss-mib"] = dep.peak_memory_mib()

    report["clientapp-process-start-s"] = import_cost_s()
    d, s = report["deployment"], report["simulation"]
    report["deployment-over-simulation"] = round(d["round-s-median"] / s["round-s-median"], 2)
    phases = d["train-phase-s-median"] + d["evaluate-phase-s-median"]
    compute = d["client-train-s-median"] or 0.0
    report["deployment-overhead-share"] = round(1 - compute / phases, 3) if phases else None
    print(f"{'':12} {'round s':>8} {'train s':>8} {'eval s':>8} {'client train s':>15}")
    for name in ("simulation", "deployment"):
        r = report[name]
        print(f"{name:12} {r['round-s-median']:8.2f} {r['train-phase-s-median']:8.2f} "
              f"{r['evaluate-phase-s-median']:8.2f} {r['client-train-s-median'] or 0:15.3f}")
    print(json.dumps({k: v for k, v in report.items() if k not in ("simulation", "deployment")},
                     indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deploy_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
