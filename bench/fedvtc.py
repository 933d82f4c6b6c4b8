"""FedVTC benchmark: local-only vs FedVTC vs homogeneous FedGen and FedAvg references.

FedVTC here is **our reading of the paper** (Niu, Dong, Qin, arXiv 2508.01669;
docs/strategies/fedvtc.md (Our reading of the paper)). Side by side, on the same partitions,
seeds and local schedule:

- ``local-only``: every client trains its own classifier (zoo model, round-robin)
  for R local passes with FedVTC's step-1 optimiser and no KL term; no traffic.
- ``local-only-2x``: the same with two local passes per round, as many passes
  over real data as FedVTC makes (its fine-tuning mixes a real pass in).
- ``fedvtc``: the default (shared, averaged decoder ψ; fine-tuning every round).
- ``fedvtc-synthetic``: ``fedvtc.mix-real = false``: fine-tuning on synthetic images
  only, so exactly local-only's passes over real data plus the synthetic ones.
- ``fedvtc-stats``: ``fedvtc.share-decoder = false`` (statistics only on the wire).
- ``fedgen``: the issue's homogeneous reference: every client runs ``vtc-cnn-1``,
  FedGen with its official defaults (``fedgen.*``) and its official client optimiser,
  plain SGD (momentum 0; with the shared momentum 0.9 and alpha_0 = beta_0 = 10 it
  diverged to chance); otherwise the same local schedule.
- ``fedavg``: the same homogeneous model with plain weight averaging.

Metrics at the final round: the clients' mean accuracy on the global test set
(generalisation, the paper's metric) and on their own local test splits; for
FedGen and FedAvg the one global model on each. Traffic: measured bytes (up + down) per
participating client per round, averaged over rounds. All federated runs go
through the real ServerApp/ClientApp code in one process (``fedapp.harness``).

Usage::

    python -m bench.fedvtc --dataset digits --clients 8 --rounds 10 --alphas 0.1 --out bench/results/fedvtc-a0.1.json
    python -m bench.fedvtc --dataset digits --clients 8 --rounds 10 --alphas 1.0 --out bench/results/fedvtc-a1.0.json
    python -m bench.fedvtc --combine bench/results/fedvtc-a0.1.json bench/results/fedvtc-a1.0.json --out bench/results/fedvtc.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clients.base import FitPlan
from clients.fedvtc import VTCPlan, train_classifier
from clients.fo import FirstOrderTrainer
from fedapp.config import AppConfig, load_config
from fedapp.harness import default_run_config, run_server_app
from fedapp.results import atomic_write_json, read_rounds
from fedapp.task.data import load_client_data, load_server_test
from fedapp.task.evaluate import evaluate
from fedapp.task.models import VTC_ZOO, SplitModel, build_model
from fedapp.task.schedule import round_lr
from fedapp.task.seeding import PURPOSE_DATA_ORDER, PURPOSE_INIT, derive_seed

METHODS = (
    "local-only", "local-only-2x", "fedvtc", "fedvtc-synthetic", "fedvtc-stats", "fedgen", "fedavg"
)
HOMOGENEOUS = ("fedgen", "fedavg")  # one global vtc-cnn-1, evaluated as such
DEVICE = torch.device("cpu")


def run_config(args: argparse.Namespace, method: str, alpha: float, seed: int,
               out: Path) -> dict[str, Any]:
    cfg = default_run_config()
    cfg.update({
        "output-dir": str(out), "run-name": f"{method}-a{alpha}-s{seed}", "seed": seed,
        "num-server-rounds": args.rounds, "data.dataset": args.dataset, "data.alpha": alpha,
        "server.min-available-nodes": args.clients, "client.lr": args.lr,
        "client.local-epochs": args.local_epochs,
    })
    if method == "local-only-2x":
        cfg["client.local-epochs"] = 2 * cfg["client.local-epochs"]
    if method == "fedgen":
        cfg["client.momentum"] = 0.0
    if method in HOMOGENEOUS:
        cfg.update({"strategy": method, "model.name": "vtc-cnn-1",
                    "server.fraction-evaluate": 0.0})  # local splits are scored below
    else:
        cfg.update({"strategy": "fedvtc", "model.clients": ",".join(VTC_ZOO),
                    "fedvtc.share-decoder": method != "fedvtc-stats",
                    "fedvtc.mix-real": method != "fedvtc-synthetic"})
    return cfg


def traffic(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Measured bytes per participating client per round, averaged over rounds 1..R."""
    rounds = [r for r in rows if r["round"] > 0 and r["sampled"] > 0]
    up = statistics.fmean(r["bytes-up"] / r["sampled"] for r in rounds)
    down = statistics.fmean(r["bytes-down"] / r["sampled"] for r in rounds)
    return {"bytes-up": up, "bytes-down": down, "bytes": up + down}


def local_accuracy(cfg: AppConfig, num_clients: int, model_for: Callable[[int], SplitModel]) -> float:
    """Mean over clients of ``model_for(pid)``'s accuracy on the client's local test split."""
    accs = []
    for pid in range(num_clients):
        data = load_client_data(cfg.data, cfg.seed, pid, num_clients)
        accs.append(evaluate(model_for(pid), data.test, 500, DEVICE).accuracy)
    return statistics.fmean(accs)


def run_federated(cfg_dict: dict[str, Any], num_clients: int) -> dict[str, Any]:
    out = run_server_app(cfg_dict, num_clients)
    rows = read_rounds(out)
    last = rows[-1]
    result: dict[str, Any] = {
        "accuracy": last["accuracy"],
        "curve": [r["accuracy"] for r in rows],
        **traffic(rows),
    }
    if cfg_dict["strategy"] in HOMOGENEOUS:
        cfg = load_config(cfg_dict)
        _, spec = load_server_test(cfg.data, cfg.seed)
        model = build_model(cfg.model.name, spec)
        model.load_state_dict(torch.load(out / "model.pt", weights_only=False)["state_dict"])
        result["accuracy-local"] = local_accuracy(cfg, num_clients, lambda pid: model)
    else:
        result["accuracy-local"] = last["accuracy-local"]
        result["per-model"] = {k.removeprefix("accuracy-"): v for k, v in last.items()
                               if k.startswith("accuracy-vtc-cnn")}
    return result


def run_local_only(cfg_dict: dict[str, Any], num_clients: int) -> dict[str, Any]:
    """Each client alone: R passes of FedVTC's step 1 without the KL term; nothing sent."""
    cfg = load_config(cfg_dict)
    test, _ = load_server_test(cfg.data, cfg.seed)
    f, c = cfg.fedvtc, cfg.client
    models: dict[int, SplitModel] = {}
    for pid in range(num_clients):
        data = load_client_data(cfg.data, cfg.seed, pid, num_clients)
        name = cfg.model.for_partition(pid)
        model = build_model(name, data.spec, seed=derive_seed(cfg.seed, PURPOSE_INIT, pid))
        for rnd in range(1, cfg.num_server_rounds + 1):
            fit = FitPlan(server_round=rnd, lr=round_lr(c.lr, c.lr_decay, rnd),
                          local_epochs=c.local_epochs, local_steps=c.local_steps,
                          batch_size=c.batch_size, optimizer=c.optimizer, momentum=c.momentum,
                          weight_decay=c.weight_decay, proximal_mu=0.0,
                          data_seed=derive_seed(cfg.seed, PURPOSE_DATA_ORDER, rnd, pid),
                          max_grad_norm=f.max_grad_norm)
            plan = VTCPlan(fit=fit, lambda_kl=0.0, lambda_dm=f.lambda_dm, lambda_syn=f.lambda_syn,
                           delta=f.delta, decoder_lr=f.decoder_lr, decoder_epochs=f.decoder_epochs,
                           synthetic_batch=f.synthetic_batch, finetune_steps=f.finetune_steps,
                           mix_real=f.mix_real, dm=f.dm, noise_seed=0)
            train_classifier(model, data.train, plan, None, DEVICE, FirstOrderTrainer())
        models[pid] = model
    per_client = [evaluate(m, test, 500, DEVICE).accuracy for m in models.values()]
    names = [cfg.model.for_partition(pid) for pid in models]
    per_model = {n: statistics.fmean(a for a, m in zip(per_client, names) if m == n)
                 for n in sorted(set(names))}
    return {"accuracy": statistics.fmean(per_client),
            "accuracy-local": local_accuracy(cfg, num_clients, models.__getitem__),
            "per-model": per_model, "bytes-up": 0.0, "bytes-down": 0.0, "bytes": 0.0}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for alpha in sorted({r["alpha"] for r in runs}):
        for method in METHODS:
            mine = [r for r in runs if r["alpha"] == alpha and r["method"] == method]
            if not mine:
                continue
            row: dict[str, Any] = {"alpha": alpha, "method": method, "seeds": len(mine)}
            for key in ("accuracy", "accuracy-local", "bytes", "bytes-up", "bytes-down", "seconds"):
                values = [r[key] for r in mine]
                row[key] = statistics.fmean(values)
                row[f"{key}-std"] = statistics.pstdev(values)
            table.append(row)
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    print(f"{'alpha':>5}  {'method':<13} {'global acc':>15} {'local acc':>15} "
          f"{'KiB/client/round':>17} {'s/run':>7}")
    for r in table:
        print(f"{r['alpha']:>5}  {r['method']:<13} "
              f"{r['accuracy']:.3f} ± {r['accuracy-std']:.3f}   "
              f"{r['accuracy-local']:.3f} ± {r['accuracy-local-std']:.3f}   "
              f"{r['bytes'] / 1024:>15.1f}  {r['seconds']:>7.0f}")


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted({r["alpha"] for r in table})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        rows = [next((r for r in table if r["alpha"] == a and r["method"] == method), None)
                for a in alphas]
        xs = [j + i * width for j in range(len(alphas))]
        for ax, key in zip(axes[:2], ("accuracy", "accuracy-local"), strict=True):
            ax.bar(xs, [r[key] if r else 0 for r in rows], width,
                   yerr=[r[f"{key}-std"] if r else 0 for r in rows], label=method, capsize=3)
        axes[2].bar(xs, [r["bytes"] / 1024 if r else 0 for r in rows], width, label=method)
    titles = ("clients' mean accuracy, global test set", "clients' mean accuracy, local splits",
              "traffic per client per round (KiB, up + down; local-only: none)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(alphas))],
                      [f"Dir({a})" for a in alphas])
        ax.set_title(title, fontsize=10)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(0, 1)
    axes[2].set_yscale("log")
    axes[2].set_ylim(bottom=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--dataset", default="mnist-offline")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--local-epochs", type=int, default=1, help="client.local-epochs")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fedvtc.json"))
    parser.add_argument("--combine", type=Path, nargs="+", default=[],
                        help="merge the runs of these JSON files into --out instead of running")
    args = parser.parse_args()
    if args.combine:
        runs = [r for path in args.combine for r in json.loads(path.read_text())["runs"]]
        table = summarise(runs)
        atomic_write_json(args.out, {"combined": [str(p) for p in args.combine], "threads": 1,
                                     "table": table, "runs": runs})
        print_table(table)
        plot(table, args.out.with_suffix(".png"))
        return
    torch.set_num_threads(1)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedvtc-bench-") as tmp:
        for alpha in args.alphas:
            for seed in args.seeds:
                for method in args.methods:
                    cfg = run_config(args, method, alpha, seed, Path(tmp))
                    t0 = time.perf_counter()
                    run = run_local_only if method.startswith("local-only") else run_federated
                    result = run(cfg, args.clients)
                    result |= {"method": method, "alpha": alpha, "seed": seed,
                               "seconds": time.perf_counter() - t0}
                    runs.append(result)
                    print(f"alpha {alpha} seed {seed} {method:<13} global {result['accuracy']:.3f} "
                          f"local {result['accuracy-local']:.3f} "
                          f"{result['bytes'] / 1024:.1f} KiB/client/round "
                          f"({result['seconds']:.0f} s)", flush=True)
                    table = summarise(runs)
                    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()},
                                                 "threads": 1, "table": table, "runs": runs})
    print_table(table)
    plot(table, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
