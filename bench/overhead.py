"""Flower overhead: one round of the default experiment in Ray simulation vs a plain loop.

Both sides do the same work per round: every client trains the FedGen MNIST CNN
on its partition (the first-order trainer of ``clients.fo``, same plan and data
order), evaluates on its local test split, the server averages the weights
(weighted by examples) and evaluates on the global test set. The Flower side is
the real ``flwr run`` CLI (10 simulated SuperNodes, 1 CPU each, 2 Ray actors);
its per-round time is the ``wall-s`` column of ``metrics.jsonl``. Round 1 holds
Ray's actor start-up and is reported apart; the steady-state rounds 2..R give
the median. The plain loop runs the clients one after another in one process
with ``torch.set_num_threads(threads)``. A third column runs our ServerApp and
ClientApp code in one process (:func:`fedapp.harness.run_server_app`: the same
messages, screening, checkpoints and results files, no Ray and no SuperLink), to
tell the app's own cost from the simulation runtime's.

Usage::

    python -m bench.overhead --repeats 3 --rounds 6 --out bench/results/overhead.json
    python -m bench.overhead --local-epochs 5 --out bench/results/overhead-5epochs.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.flwr_cli import ROOT, FlwrCli
from clients.base import FitPlan
from clients.fo import FirstOrderTrainer
from fedapp.config import AppConfig, load_config
from fedapp.harness import default_run_config, run_server_app
from fedapp.results import atomic_write_json, read_rounds
from fedapp.task.data import load_client_data, load_server_test
from fedapp.task.evaluate import evaluate
from fedapp.task.models import build_model
from fedapp.task.schedule import round_lr
from fedapp.task.seeding import PURPOSE_DATA_ORDER, PURPOSE_INIT, derive_seed


def plain_rounds(cfg: AppConfig, num_clients: int, rounds: int, threads: int) -> list[float]:
    """Seconds per round of the same federated work without Flower."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    test, spec = load_server_test(cfg.data, cfg.seed)
    parts = [load_client_data(cfg.data, cfg.seed, i, num_clients) for i in range(num_clients)]
    model = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        states, weights = [], []
        for pid, data in enumerate(parts):
            local = build_model(cfg.model.name, spec)
            local.load_state_dict(global_state)
            c = cfg.client
            plan = FitPlan(rnd, round_lr(c.lr, c.lr_decay, rnd), c.local_epochs, c.local_steps,
                           c.batch_size, c.optimizer, c.momentum, c.weight_decay, 0.0,
                           derive_seed(cfg.seed, PURPOSE_DATA_ORDER, rnd, pid))
            stats = FirstOrderTrainer().fit(local, data.train, plan, device)
            states.append(local.state_dict())
            weights.append(stats.num_examples)
        total = sum(weights)
        global_state = {
            k: sum(s[k].double() * (w / total) for s, w in zip(states, weights)).to(v.dtype)
            for k, v in global_state.items()
        }
        model.load_state_dict(global_state)
        for data in parts:
            evaluate(model, data.test, cfg.server.eval_batch_size, device)
        evaluate(model, test, cfg.server.eval_batch_size, device)
        times.append(time.perf_counter() - t0)
    return times


def flower_rounds(
    cli: FlwrCli, out: Path, num_clients: int, rounds: int, repeat: int, local_epochs: int,
    app: Path = ROOT, tag: str = "overhead",
) -> list[float]:
    run_name = f"{tag}-{repeat}"
    entry, log = cli.run(
        f'output-dir="{out}" run-name="{run_name}" num-server-rounds={rounds} '
        f"client.local-epochs={local_epochs}",
        f"num-supernodes={num_clients} client-resources-num-cpus=1", app=app,
    )
    if entry["status"] != "finished:completed":
        raise RuntimeError(f"flwr run failed: {entry['status-details']}\n{log[-2000:]}")
    return [r["wall-s"] for r in read_rounds(out / run_name) if r["round"] >= 1]


def inprocess_rounds(out: Path, num_clients: int, rounds: int, repeat: int,
                     local_epochs: int) -> list[float]:
    """The same run through our ServerApp and ClientApp code in one process, without Ray."""
    cfg = {**default_run_config(), "output-dir": str(out), "run-name": f"inprocess-{repeat}",
           "num-server-rounds": rounds, "client.local-epochs": local_epochs}
    return [r["wall-s"] for r in read_rounds(run_server_app(cfg, num_clients)) if r["round"] >= 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1,
                        help="client.local-epochs on both sides (more work per round)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the plain loop (clients use client.num-threads = 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    parser.add_argument("--baseline-app", type=Path, default=None,
                        help="another checkout of fedzg, run under flwr run in the same repeats "
                             "(before/after side by side)")
    args = parser.parse_args()

    cfg = load_config({**default_run_config(), "client.local-epochs": args.local_epochs})
    flower_steady, flower_first, plain, inproc, baseline = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, FlwrCli() as cli:
        for repeat in range(args.repeats):  # interleaved, so load drifts hit both sides
            rounds = flower_rounds(
                cli, Path(tmp), args.clients, args.rounds, repeat, args.local_epochs
            )
            flower_first.append(rounds[0])
            flower_steady += rounds[1:]
            if args.baseline_app is not None:
                baseline += flower_rounds(cli, Path(tmp), args.clients, args.rounds, repeat,
                                          args.local_epochs, args.baseline_app, "baseline")[1:]
            plain += plain_rounds(cfg, args.clients, args.rounds, args.threads)[1:]
            inproc += inprocess_rounds(
                Path(tmp), args.clients, args.rounds, repeat, args.local_epochs
            )[1:]
    f_med, p_med = statistics.median(flower_steady), statistics.median(plain)
    i_med = statistics.median(inproc)
    result = {
        "machine": {"cpus": os.cpu_count(), "torch-threads-plain": args.threads,
                    "load-avg-1m": os.getloadavg()[0]},
        "setup": {"clients": args.clients, "rounds": args.rounds, "repeats": args.repeats,
                  "local-epochs": args.local_epochs,
                  "model": cfg.model.name, "dataset": cfg.data.dataset},
        "flower-round-s": {"median": f_med, "all": flower_steady},
        "flower-first-round-s": {"median": statistics.median(flower_first), "all": flower_first},
        "plain-round-s": {"median": p_med, "all": plain},
        "inprocess-round-s": {"median": i_med, "all": inproc},
        "ratio-flower-over-plain": f_med / p_med,
        **({"baseline-app": str(args.baseline_app),
            "baseline-flower-round-s": {"median": statistics.median(baseline), "all": baseline},
            "ratio-baseline-over-plain": statistics.median(baseline) / p_med} if baseline else {}),
        "flower-p90-round-s": float(np.percentile(flower_steady, 90)),
    }
    atomic_write_json(args.out, result)
    print(f"{'':28s}{'median s/round':>16s}{'n':>6s}")
    print(f"{'Flower (Ray simulation)':28s}{f_med:16.3f}{len(flower_steady):6d}")
    print(f"{'plain PyTorch loop':28s}{p_med:16.3f}{len(plain):6d}")
    print(f"{'fedzg in one process':28s}{i_med:16.3f}{len(inproc):6d}")
    print(f"{'Flower first round (cold)':28s}{statistics.median(flower_first):16.3f}{len(flower_first):6d}")
    if baseline:
        b_med = statistics.median(baseline)
        print(f"{'Flower, baseline app':28s}{b_med:16.3f}{len(baseline):6d}")
        print(f"ratio baseline Flower / plain = {b_med / p_med:.2f}")
    print(f"ratio Flower / plain = {f_med / p_med:.2f}   (written to {args.out})")


if __name__ == "__main__":
    main()
