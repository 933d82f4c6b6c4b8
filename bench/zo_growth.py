"""zo-seed growth: server round time at round ~10 vs ~500, memory at 100 vs 1000 nodes.

Issue 18's goal: flat within 20 %. Both parts run in process (:mod:`fedapp.harness`:
the real strategy, ClientApp and RoundRecorder with its ``metrics.jsonl``, journal and
checkpoint every round), scaled to fit a shared 2-core machine:

- **rounds**: ``--rounds`` (500) rounds of ``zo-seed`` on ``digits`` (IID) with 2
  nodes, one ZO step per round (P = 1), FedGen's CNN, no client-side evaluation.
  Per round, *server-s* = ``wall-s − train-phase-s − evaluate-phase-s``: what the
  server spends outside the nodes' work (aggregation, replay onto its replica,
  server-side evaluation, the metrics row and the checkpoint); and *server-cpu-s*, the
  process's CPU time between two recorded rounds minus the CPU time spent inside the
  grid's client calls (less sensitive than wall time to other jobs on a shared
  machine). Medians of rounds 6–15 and of the last ten. The checkpoint's size is read
  after round 10 and at the end.
- **nodes**: one round of ``zo-seed`` with every node sampled (``mnist-offline``,
  IID, FedGen's CNN, one ZO step), ``--nodes`` distinct nodes (100 and 1000). After
  the round every node holds what it keeps between rounds: *node-state* is the bytes
  in the nodes' ``context.state`` summed over nodes, *shared* the replicas held in the
  process's store (:mod:`clients.replicas`; absent before this change), and
  *rss-delta* the process's resident memory after the round minus before it.

The script uses only the harness, so it also measures an older checkout: run it with
``PYTHONPATH=<checkout>`` from that checkout to get the *before* column.

Usage::

    python -m bench.zo_growth --out bench/results/zo_growth.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedapp.harness import InProcessGrid, default_run_config

ROOT = Path(__file__).resolve().parents[1]
ZO = {"strategy": "zo-seed", "client.trainer": "zo", "zo.local-steps": 1, "zo.num-directions": 1,
      "zo.lr": 1e-3, "server.fraction-evaluate": 0.0, "data.partition": "iid"}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TimedGrid(InProcessGrid):
    """Counts the CPU time spent inside client calls."""

    client_cpu = 0.0

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        t0 = time.process_time()
        try:
            return super().send_and_receive(messages, timeout=timeout)
        finally:
            TimedGrid.client_cpu += time.process_time() - t0


def _serve(cfg: dict[str, Any], num_nodes: int) -> tuple[InProcessGrid, Path, list[float]]:
    """Run the ServerApp; also returns the server's CPU seconds per recorded round."""
    from flwr.app import Context, RecordDict

    from fedapp import recorder
    from fedapp.client_app import app as client_app
    from fedapp.server_app import main

    marks: list[tuple[float, float]] = []
    original = recorder.RoundRecorder.__call__

    def timed(self: Any, report: Any) -> Any:
        try:
            return original(self, report)
        finally:
            marks.append((time.process_time(), TimedGrid.client_cpu))

    recorder.RoundRecorder.__call__ = timed  # type: ignore[method-assign]
    try:
        grid = TimedGrid(client_app, cfg, num_nodes, record=False)
        main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                           run_config=cfg))
    finally:
        recorder.RoundRecorder.__call__ = original  # type: ignore[method-assign]
    cpu = [0.0] + [(b[0] - a[0]) - (b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    return grid, Path(cfg["output-dir"]) / cfg["run-name"], cpu


def _rows(directory: Path) -> list[dict[str, Any]]:
    text = (directory / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def server_s(row: dict[str, Any]) -> float:
    return row["wall-s"] - row.get("train-phase-s", 0.0) - row.get("evaluate-phase-s", 0.0)


def rounds_part(tmp: Path, rounds: int) -> dict[str, Any]:
    base = {**default_run_config(), **ZO, "data.dataset": "digits", "output-dir": str(tmp)}
    _, ten, _ = _serve({**base, "num-server-rounds": 10, "run-name": "ten"}, 2)
    t0 = time.perf_counter()
    _, out, cpu = _serve({**base, "num-server-rounds": rounds, "run-name": "long"}, 2)
    total = time.perf_counter() - t0
    rows = _rows(out)
    early, late = rows[6:16], rows[-10:]
    result = {
        "rounds": rounds,
        "server_cpu_s_early": statistics.median(cpu[6:16]),
        "server_cpu_s_late": statistics.median(cpu[-10:]),
        "server_s_early": statistics.median(server_s(r) for r in early),
        "server_s_late": statistics.median(server_s(r) for r in late),
        "wall_s_early": statistics.median(r["wall-s"] for r in early),
        "wall_s_late": statistics.median(r["wall-s"] for r in late),
        "checkpoint_bytes_round10": (ten / "model.pt").stat().st_size,
        "checkpoint_bytes_final": (out / "model.pt").stat().st_size,
        "total_s": total,
    }
    result["server_ratio"] = result["server_s_late"] / result["server_s_early"]
    result["server_cpu_ratio"] = result["server_cpu_s_late"] / result["server_cpu_s_early"]
    return result


def _state_bytes(grid: InProcessGrid) -> int:
    total = 0
    for ctx in grid.contexts.values():
        for record in ctx.state.config_records.values():
            for value in record.values():
                total += len(value) if isinstance(value, (bytes, str)) else 8
    return total


def nodes_part(tmp: Path, num_nodes: int) -> dict[str, Any]:
    cfg = {**default_run_config(), **ZO, "data.dataset": "mnist-offline", "num-server-rounds": 1,
           "output-dir": str(tmp), "run-name": f"n{num_nodes}", "data.min-partition-size": 1,
           "server.min-available-nodes": 1}
    before = _rss_mib()
    t0 = time.perf_counter()
    grid, _, _ = _serve(cfg, num_nodes)
    seconds = time.perf_counter() - t0
    shared = 0
    replicas = sys.modules.get("clients.replicas")
    if replicas is not None:
        shared = replicas.STORE.memory_bytes()
    state = _state_bytes(grid)
    return {"nodes": num_nodes, "node_state_bytes": state, "shared_bytes": shared,
            "held_bytes": state + shared, "rss_delta_mib": _rss_mib() - before, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--nodes", default="100,1000")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zo_growth.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rounds = rounds_part(Path(tmp), args.rounds)
        print(f"server round: median {rounds['server_s_early']:.4f} s at rounds 6-15, "
              f"{rounds['server_s_late']:.4f} s at the last 10 of {args.rounds} "
              f"(x{rounds['server_ratio']:.2f}); server CPU {rounds['server_cpu_s_early']:.4f} s vs "
              f"{rounds['server_cpu_s_late']:.4f} s (x{rounds['server_cpu_ratio']:.2f}); checkpoint {rounds['checkpoint_bytes_round10']} B "
              f"after 10 rounds, {rounds['checkpoint_bytes_final']} B after {args.rounds}",
              flush=True)
        nodes = [nodes_part(Path(tmp), int(n)) for n in args.nodes.split(",")]
    print("\n| nodes | node state B | shared replicas B | held B | RSS delta MiB | s |")
    print("|---|---|---|---|---|---|")
    for n in nodes:
        print(f"| {n['nodes']} | {n['node_state_bytes']:,} | {n['shared_bytes']:,} | "
              f"{n['held_bytes']:,} | {n['rss_delta_mib']:.0f} | {n['seconds']:.1f} |")
    result = {"label": args.label, "rounds": rounds, "nodes": nodes,
              "note": "shared 2-core machine; in-process harness; see the module docstring"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
