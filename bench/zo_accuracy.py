"""Accuracy of zeroth-order federations: ZO fine-tuning, ZO from scratch, mixed FO/ZO.

In-process federations (:mod:`fedapp.harness`, the real strategies, ClientApp and
RoundRecorder): the offline MNIST subset (4000 training images after the 20 %
global test split), 10 clients on Dirichlet(0.5), 5 sampled per round, FedGen's
MNIST CNN, 20 local steps of batch 32 per round for every trainer, accuracy on
the global test set (1000 images) after every round.

- FO: FedAvg, SGD lr 0.05 momentum 0.9 (the defaults).
- ZO: ``zo-seed`` (scalars only), central estimator, Gaussian, P = 1, μ = 1e-3,
  lr from a short sweep (``sweep``, recorded for the ``zo.lr`` default,
  decision Q7, docs/strategies/zo-seed.md).
- (a) ``finetune``: pre-train first-order on a small part of the data (one IID
  tenth of the training pool, 3 epochs, centrally), then fine-tune
  federatedly with ZO (``zo-seed``) vs FO (FedAvg) vs mixed 50/50, same rounds.
- (b) ``scratch``: ZO from the shared-seed init for ``--zo-rounds`` rounds vs FO
  for ``--rounds`` rounds.
- (c) ``mixed``: FedAvg with 5 FO and 5 ZO clients from scratch.

Usage::

    python -m bench.zo_accuracy --out bench/results/zo_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench.flwr_cli import ROOT  # noqa: E402
from clients.base import FitPlan  # noqa: E402
from clients.fo import FirstOrderTrainer  # noqa: E402
from fedapp.config import load_config  # noqa: E402
from fedapp.harness import default_run_config, run_federation  # noqa: E402
from fedapp.task.data import load_client_data, load_server_test  # noqa: E402
from fedapp.task.evaluate import evaluate  # noqa: E402
from fedapp.task.models import build_model  # noqa: E402
from fedapp.task.seeding import PURPOSE_INIT, derive_seed  # noqa: E402

CLIENTS = 10
COMMON: dict[str, Any] = {
    "server.fraction-train": 0.5, "server.fraction-evaluate": 0.0, "client.local-steps": 20,
    "zo.local-steps": 20, "data.alpha": 0.5, "data.partition": "dirichlet",
    "strategy-card": False,  # these settings exactly, not zo-seed's card
}
FO = {"strategy": "fedavg", "client.trainer": "fo"}
ZO = {"strategy": "zo-seed", "client.trainer": "zo"}
MIXED = {"strategy": "fedavg", "client.trainer": "mixed", "client.zo-fraction": 0.5}


def pretrain(seed: int) -> tuple[dict[str, torch.Tensor], float]:
    """First-order pre-training on one IID tenth of the training pool (3 epochs, centrally)."""
    cfg = load_config({**default_run_config(), "seed": seed, "data.partition": "iid"})
    test, spec = load_server_test(cfg.data, cfg.seed)
    part = load_client_data(cfg.data, cfg.seed, 0, CLIENTS).train
    model = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    plan = FitPlan(server_round=1, lr=0.05, local_epochs=3, local_steps=0, batch_size=32,
                   optimizer="sgd", momentum=0.9, weight_decay=0.0, proximal_mu=0.0, data_seed=seed)
    FirstOrderTrainer().fit(model, part, plan, torch.device("cpu"))
    return model.state_dict(), evaluate(model, test, 500, torch.device("cpu")).accuracy


def curve(name: str, overrides: dict[str, Any], rounds: int, tmp: str, seed: int,
          initial: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = run_federation({**COMMON, **overrides, "num-server-rounds": rounds, "seed": seed,
                "output-dir": tmp, "run-name": name}, CLIENTS, initial)
    acc = [r["accuracy"] for r in rows]
    up = sum(r["bytes-up"] for r in rows)
    print(f"{name}: accuracy {acc[0]:.3f} -> {acc[-1]:.3f} after {rounds} rounds, "
          f"{time.perf_counter() - t0:.0f} s, {up / 2**20:.3f} MiB up in total", flush=True)
    return {"name": name, "overrides": overrides, "accuracy": acc, "bytes_up_total": up}


def rounds_to_reach(acc: list[float], target: float) -> int | None:
    return next((i for i, a in enumerate(acc) if a >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--zo-rounds", type=int, default=100)
    parser.add_argument("--sweep-rounds", type=int, default=15)
    parser.add_argument("--sweep", default="3e-4,1e-3,3e-3,1e-2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zo_accuracy.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}, "common": COMMON}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        sweep = [curve(f"sweep-lr{lr}", {**ZO, "zo.lr": float(lr)}, args.sweep_rounds, tmp, args.seed)
                 for lr in args.sweep.split(",")]
        best = max(sweep, key=lambda c: c["accuracy"][-1])
        lr = best["overrides"]["zo.lr"]
        out["sweep"], out["zo_lr"] = sweep, lr
        print(f"zo.lr sweep: best {lr}", flush=True)
        save()
        zo = {**ZO, "zo.lr": lr}
        weights, pre_acc = pretrain(args.seed)
        out["pretrain_accuracy"] = pre_acc
        out["finetune"] = [
            curve("finetune-zo", zo, args.rounds, tmp, args.seed, weights),
            curve("finetune-fo", FO, args.rounds, tmp, args.seed, weights),
            curve("finetune-mixed", {**MIXED, "zo.lr": lr}, args.rounds, tmp, args.seed, weights),
        ]
        save()
        out["scratch"] = [
            curve("scratch-fo", FO, args.rounds, tmp, args.seed),
            curve("scratch-zo", zo, args.zo_rounds, tmp, args.seed),
            curve("scratch-mixed", {**MIXED, "zo.lr": lr}, args.rounds, tmp, args.seed),
        ]
        save()
    report(out, args.out.with_suffix(".png"))
    save()


def report(out: dict[str, Any], png: Path) -> None:
    fo, zo, mixed = out["scratch"]
    n = len(fo["accuracy"]) - 1
    out["zo_rounds_to_fo_round"] = {
        f"fo@{k}": rounds_to_reach(zo["accuracy"], fo["accuracy"][k]) for k in (1, 2, 5, n) if k <= n
    }
    print("\n| experiment | start | after %d rounds | ZO rounds to match |" % n)
    print("|---|---|---|---|")
    for c in out["finetune"] + out["scratch"]:
        acc = c["accuracy"]
        print(f"| {c['name']} | {acc[0]:.3f} | {acc[min(n, len(acc) - 1)]:.3f} | "
              f"{'' if len(acc) - 1 <= n else f'{acc[-1]:.3f} after {len(acc) - 1}'} |")
    print("ZO rounds needed to reach FO's accuracy at round k:", out["zo_rounds_to_fo_round"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "finetune", "(a) fine-tune from FO pre-training"),
                           (axes[1], "scratch", "(b, c) from scratch"),
                           (axes[2], "sweep", "zo.lr sweep (zo-seed, from scratch)")):
        for c in out[key]:
            ax.plot(c["accuracy"], label=c["name"])
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel("global test accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


if __name__ == "__main__":
    main()
