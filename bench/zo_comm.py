"""Communication per client per round: FedAvg (weights) vs zo-seed (seeds and scalars).

In-process federations (:mod:`fedapp.harness`): 10 clients, Dirichlet(0.5) over
the offline MNIST subset, FedGen's MNIST CNN, 20 local steps, client-side
evaluation off (train traffic only), 3 rounds. Bytes come from the strategy's
ledger (``bytes-up``/``bytes-down`` of ``metrics.jsonl``: the records actually
sent and received, array data plus scalars and keys), divided by the clients
of the round; the steady-state rounds 2..R give the median. The analytic
payloads of docs/strategies/zo-seed.md (Global model, catch-up, consistency) sit next to them.

Usage::

    python -m bench.zo_comm --out bench/results/zo_comm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.flwr_cli import ROOT
from fedapp.harness import run_federation

STEPS = 20
COMMON = {"num-server-rounds": 3, "server.fraction-evaluate": 0.0, "client.local-steps": STEPS,
          "zo.local-steps": STEPS, "zo.num-directions": 1, "zo.lr": 1e-3,
          "strategy-card": False}  # these settings exactly, not zo-seed's card
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("fedavg (fo)", {"strategy": "fedavg", "client.trainer": "fo"}),
    ("fedavg (zo, weights up)", {"strategy": "fedavg", "client.trainer": "zo"}),
    ("zo-seed (shared seeds, BN buffers synced)", {"strategy": "zo-seed", "client.trainer": "zo"}),
    ("zo-seed (shared seeds, no buffers)", {"strategy": "zo-seed", "client.trainer": "zo",
                                             "zo.sync-buffers": False}),
    ("zo-seed (client seeds, BN buffers synced)", {"strategy": "zo-seed", "client.trainer": "zo",
                                                   "zo.seed-source": "client"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zo_comm.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS:
            rows = run_federation({**COMMON, **overrides, "output-dir": tmp, "run-name": f"r{len(results)}"},
                       args.clients)
            steady = rows[2:]
            up = statistics.median(r["bytes-up"] / r["clients"] for r in steady)
            down = statistics.median(r["bytes-down"] / r["sampled"] for r in steady)
            results.append({"variant": name, "up_bytes_per_client": up,
                            "down_bytes_per_client": down, "rounds": rows})
            print(f"{name}: up {up:.0f} B, down {down:.0f} B per client per round", flush=True)
    fo_up = results[0]["up_bytes_per_client"]
    print(f"\n| variant ({STEPS} local steps, P = 1) | up B/client/round | down B/client/round "
          "| up vs FedAvg |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['up_bytes_per_client']:,.0f} | "
              f"{r['down_bytes_per_client']:,.0f} | {r['up_bytes_per_client'] / fo_up:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"local_steps": STEPS, "clients": args.clients,
         "analytic": {"zo-seed scalars up (H*P*4 B)": STEPS * 4,
                      "fedgen-cnn parameters (d*4 B)": 26_434 * 4},
         "results": results}, indent=1))


if __name__ == "__main__":
    main()
