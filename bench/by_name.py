"""Every strategy chosen by name alone: accuracy, bytes and time with its card's settings.

Each run is ``strategy = "<name>"`` and nothing else of the method's (the card fills in
trainer, models and recommended values; ``fedapp/cards/``), through the in-process harness
(:func:`fedapp.harness.run_federation`): mnist-offline, the default Dirichlet(0.5) partition,
10 nodes, 10 rounds, seed 0, FedAvg alongside. Reported per strategy: final-round accuracy,
the best round's accuracy (test-selected: an upper bound, never a headline), the accuracy of
every round, bytes up + down per client-round and wall seconds per round. FedVTC has no
global model: its accuracy is the clients' mean accuracy on the global test set, printed beside
its local-only baseline (every client trains its own zoo model alone for as many rounds,
``bench.fedvtc.run_local_only``, same clients and seed).

Usage::

    python -m bench.by_name                       # all strategies, 10 rounds
    python -m bench.by_name --strategies fedavg,zo-seed --rounds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.fedvtc import run_local_only
from fedapp.harness import default_run_config, run_federation

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("fedavg", "fedprox", "fedgen", "zo-seed", "heron-sfl", "fedzge", "fedvtc")


def one(strategy: str, rounds: int, nodes: int, seed: int, out: Path) -> dict[str, Any]:
    """One by-name run; its summary row."""
    overrides = {"strategy": strategy, "num-server-rounds": rounds, "seed": seed,
                 "output-dir": str(out), "run-name": strategy}
    t0 = time.perf_counter()
    rows = run_federation(overrides, nodes)
    wall = time.perf_counter() - t0
    trained = [r for r in rows if r["round"] > 0]
    per_round = [r.get("accuracy", float("nan")) for r in trained]
    client_rounds = sum(r.get("clients", 0) for r in trained) or 1
    moved = sum(r.get("bytes-up", 0) + r.get("bytes-down", 0) for r in trained)
    return {
        "strategy": strategy,
        "final": per_round[-1] if per_round else float("nan"),
        "best-test-selected": max(per_round) if per_round else float("nan"),
        "accuracy": per_round,
        "local-only": (run_local_only({**default_run_config(), **overrides}, nodes)["accuracy"]
                       if strategy == "fedvtc" else None),
        "bytes-per-client-round": moved / client_rounds,
        "s-per-round": wall / max(len(trained), 1),
        "failed": sum(r.get("failed-train", 0) + r.get("failed-evaluate", 0) for r in trained),
        "rejected": sum(r.get("rejected", 0) for r in trained),
    }


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table of the README's methods section."""
    lines = ["| strategy (by name) | final acc | best acc (test-selected) | accuracy per round "
             "| bytes / client-round | s / round |", "|---|---|---|---|---|---|"]
    for r in results:
        curve = " ".join(f"{a:.2f}" for a in r["accuracy"])
        if r["local-only"] is not None:
            curve += f" (local-only baseline {r['local-only']:.3f})"
        lines.append(f"| {r['strategy']} | {r['final']:.3f} | {r['best-test-selected']:.3f} | "
                     f"{curve} | {r['bytes-per-client-round'] / 1024:.1f} KiB | "
                     f"{r['s-per-round']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "by_name.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.strategies.split(","):
            results.append(one(name, args.rounds, args.nodes, args.seed, Path(tmp)))
            r = results[-1]
            print(f"{name}: final {r['final']:.3f}, per round "
                  f"{[round(a, 3) for a in r['accuracy']]}, {r['s-per-round']:.1f} s/round",
                  flush=True)
            write(args, results)  # after each strategy: a long run keeps what it measured
    print(table(results))
    print(f"wrote {args.out}")


def write(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "results": results}, indent=1))


if __name__ == "__main__":
    main()
