"""FedZGE vs local-only vs FedAvg on the offline MNIST subset, plus FedZGE's traffic.

Side by side, for every Dirichlet alpha and seed, on the same partition of
``mnist-offline`` (10 clients):

- ``local-only``: each client trains its private model alone, exactly FedZGE's local
  phase (same architecture, initialisation, data order, E1 epochs of Adam per round)
  with no distillation; the clients' mean accuracy on the global test set.
- ``fedzge``: heterogeneous clients (:data:`CLIENT_ZOO`), global model ``mlp``;
  ``seed`` direction transport; every other setting the official default. The global model's accuracy on the
  held-out test set at the *final* round (never a test-selected round), and the
  clients' mean accuracy before and after the last local distillation.
- ``fedzge-tensor`` (first seed, ``--tensor-rounds`` rounds): the official transport
  (all 1+q batches sent); the tests show a round is bitwise identical to ``seed``, so
  it runs only long enough to measure bytes and show the same accuracy.
- ``fedavg``: Flower's FedAvg with a homogeneous ``fedgen-cnn`` (pyproject defaults).
- ``kd-real`` (a diagnostic, not a method): the local-only clients' ensemble labels N
  *real* training images and a fresh global model distils from them with the same
  KD code for as many steps as FedZGE's server takes in the whole run (E2 per round):
  the ceiling of the KD path when the synthetic images are as good as real ones.

Everything runs in-process (:mod:`fedapp.harness`: the real ServerApp, ClientApp,
messages and byte counts; no Ray), one torch thread. Finally the records of one
round are built for the official CIFAR-10 shapes (N = 500, q = 5, C = 10) and their
bytes counted, to compare with the official code's 35.2 MiB down / 117 KiB up.

Usage::

    python -m bench.fedzge --rounds 8 --seeds 0 1 2 --alphas 0.1 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.flwr_cli import ROOT
from clients.fedzge import accuracy, local_update
from clients.fo import FirstOrderTrainer
from clients.plans import fedzge_plan, resolve_node
from fedapp.config import AppConfig, NodeConfig, load_config
from fedapp.harness import default_run_config, run_server_app
from fedapp.results import atomic_write_json, read_rounds
from fedapp.task.data import load_client_data, load_server_test
from fedapp.task.fedzge import (
    ImageGenerator,
    answer_queries,
    distill,
    ensemble_logits,
    perturbed_queries,
    sample_latents,
)
from fedapp.task.models import ImageSpec, build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.task.zo import unit_directions
from fedapp.wire import fedzge as wire
from fedapp.wire.common import config_message, content_bytes

#: Round-robin over the 10 clients: one ``cnn`` (50x the MACs of the others), then
#: ``fedgen-cnn`` and ``mlp`` alternating; ResNets are out of reach of a shared 2-core CPU.
CLIENT_ZOO = "cnn,fedgen-cnn,mlp,fedgen-cnn,mlp,fedgen-cnn,mlp,fedgen-cnn,mlp,fedgen-cnn"
#: BatchNorm-free: the global model never sees real data, so BN statistics learnt on
#: synthetic images would be wrong on the test set.
GLOBAL_MODEL = "mlp"


def base_config(args: argparse.Namespace, alpha: float, seed: int, out: Path) -> dict[str, Any]:
    return {
        **default_run_config(),
        "output-dir": str(out),
        "seed": seed,
        "num-server-rounds": args.rounds,
        "data.alpha": alpha,
        # FedZGE's plain Dirichlet split: docs/evaluation.md (Dirichlet partition)
        "data.min-partition-size": 0,
        "server.fraction-evaluate": 0.0,
    }


def fedzge_config(base: dict[str, Any], args: argparse.Namespace, transport: str) -> dict[str, Any]:
    return {
        **base,
        "strategy": "fedzge",
        "model.name": GLOBAL_MODEL,
        "model.clients": CLIENT_ZOO,
        "fedzge.synthetic-samples": args.synthetic,
        "fedzge.direction-transport": transport,
        "fedzge.client-eval": "final",
        "run-name": f"fedzge-{transport}",
    }


def local_only(cfg: AppConfig, clients: int) -> tuple[list[float], float]:
    """Each client's accuracy on the global test set after R rounds of FedZGE's local phase,
    and the ``kd-real`` diagnostic's global accuracy."""
    test, spec = load_server_test(cfg.data, cfg.seed)
    accs, models, sizes, images = [], [], [], []
    for pid in range(clients):
        data = load_client_data(cfg.data, cfg.seed, pid, clients)
        name = cfg.model.for_partition(pid)
        model = build_model(name, data.spec, seed=derive_seed(cfg.seed, PURPOSE_INIT, pid + 1))
        node = resolve_node(NodeConfig(partition_id=pid, num_partitions=clients), cfg)
        for rnd in range(1, cfg.num_server_rounds + 1):
            local_update(model, data.train, fedzge_plan(cfg, node, rnd), torch.device("cpu"),
                         FirstOrderTrainer())
        accs.append(accuracy(model, test, cfg.server.eval_batch_size, torch.device("cpu")))
        models.append(model)
        sizes.append(len(data.train))
        images.append(torch.from_numpy(data.train.x).float() / 255.0)
    z = cfg.fedzge
    gen = torch.Generator().manual_seed(cfg.seed)
    pool = torch.cat(images)
    x = pool[torch.randperm(len(pool), generator=gen)[: z.synthetic_samples]]  # (N, *img)
    teacher = ensemble_logits([answer_queries(m, x, x.unsqueeze(0)[:0]) for m in models], sizes)[0]
    student = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    steps = z.server_steps * cfg.num_server_rounds
    distill(student, x, teacher, z.temperature, steps, z.server_lr)
    return accs, accuracy(student, test, cfg.server.eval_batch_size, torch.device("cpu"))


def per_round(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(r[key] for r in rows if r["round"] >= 1)


def fedzge_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    last = rows[-1]
    return {
        "global-acc-final": last["accuracy"],
        "client-acc-before": last.get("client-acc-before"),
        "client-acc-after": last.get("client-acc-after"),
        "bytes-down-per-client-round": per_round(rows, "bytes-down-per-client"),
        "bytes-up-per-client-round": per_round(rows, "bytes-up-per-client"),
        "query-bytes-down-per-client-round": per_round(rows, "query-bytes-down-per-client"),
        "query-bytes-up-per-client-round": per_round(rows, "query-bytes-up-per-client"),
        "skipped-rounds": sum(int(r.get("skipped", 0)) for r in rows),
        "curve": [r["accuracy"] for r in rows],
        "round-s": per_round(rows, "wall-s"),
    }


def fedavg_summary(rows: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    return {
        "global-acc-final": rows[-1]["accuracy"],
        "bytes-down-per-client-round": per_round(rows, "bytes-down") / clients,
        "bytes-up-per-client-round": per_round(rows, "bytes-up") / clients,
        "curve": [r["accuracy"] for r in rows],
        "round-s": per_round(rows, "wall-s"),
    }


def cifar_traffic(q: int = 5, n: int = 500, classes: int = 10) -> dict[str, int]:
    """Bytes of one round's FedZGE records for CIFAR-10 shapes, built by the real codecs."""
    spec = ImageSpec(3, 32, 32, classes)
    latents = sample_latents(n, 100, classes, seed=0)
    with torch.no_grad():
        x = ImageGenerator(spec)(latents.z, latents.y)  # (N, 3, 32, 32)
    queries = perturbed_queries(x, unit_directions(tuple(x.shape), q, 1), 1e-3)
    seed_query = wire.encode_query(wire.QueryDown(1, x, None, q, 1e-3, seed=1))
    tensor_query = wire.encode_query(wire.QueryDown(1, x, queries, q, 1e-3, seed=None))
    local_reply = wire.encode_local_reply(wire.LocalUp(1, 1, 1, wire.PrivateAccuracy(1, 1)))
    distill_reply = wire.encode_distill_reply(
        wire.DistillUp(1, 1.0, wire.PrivateAccuracy(1.0, 1.0))
    )
    logits = wire.encode_logits(wire.LogitsUp(torch.zeros(1 + q, n, classes), 1))
    distill = wire.encode_distill(wire.DistillDown(1, torch.zeros(n, classes), 5.0, 10))
    b = content_bytes
    other_down = b(config_message(1)) + b(distill)
    other_up = b(local_reply) + b(distill_reply)
    return {
        "query-down-seed": b(seed_query),
        "query-down-tensor": b(tensor_query),
        "query-up": b(logits),
        "distill-down": b(distill),
        "round-down-seed": b(seed_query) + other_down,
        "round-down-tensor": b(tensor_query) + other_down,
        "round-up": b(logits) + other_up,
    }


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted(results["runs"])
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.5 * len(alphas), 4), squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        runs = results["runs"][alpha]
        for method, colour in (("fedzge", "tab:blue"), ("fedavg", "tab:orange")):
            curves = [run[method]["curve"] for run in runs]
            mean = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
            ax.plot(range(len(mean)), mean, label=f"{method} (global model)", color=colour)
        local = statistics.fmean(statistics.fmean(run["local-only"]) for run in runs)
        ax.axhline(local, color="tab:grey", ls="--", label="local-only (client mean)")
        after = [run["fedzge"]["client-acc-after"] for run in runs]
        ax.axhline(statistics.fmean(after), color="tab:green", ls=":",
                   label="FedZGE clients after KD (mean)")
        kd_real = statistics.fmean(run["kd-real"] for run in runs)
        ax.axhline(kd_real, color="tab:red", ls="-.", label="diagnostic: KD on real images")
        ax.set_title(f"mnist-offline, Dirichlet alpha = {alpha}, {len(runs)} seeds")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--synthetic", type=int, default=256, help="N synthetic images per round")
    parser.add_argument("--tensor-rounds", type=int, default=2,
                        help="rounds of the tensor-transport run (bytes only)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fedzge.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "figures" / "fedzge.png")
    parser.add_argument("--report", action="store_true",
                        help="only print the tables (and a Markdown one) from --out and redraw --plot")
    args = parser.parse_args()
    if args.report:
        results = json.loads(args.out.read_text())
        plot(results, args.plot)
        report(results)
        markdown(results)
        return
    torch.set_num_threads(1)

    results: dict[str, Any] = {
        "setup": {**vars(args), "out": str(args.out), "plot": str(args.plot),
                  "client-models": CLIENT_ZOO, "global-model": GLOBAL_MODEL,
                  "fedavg-model": "fedgen-cnn", "cpus": os.cpu_count(), "torch-threads": 1},
        "runs": {},
        "cifar10-traffic": cifar_traffic(),
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in args.alphas:
            runs = results["runs"].setdefault(str(alpha), [])
            for seed in args.seeds:
                out = Path(tmp) / f"a{alpha}-s{seed}"
                base = base_config(args, alpha, seed, out)
                run: dict[str, Any] = {"seed": seed}
                cfg = fedzge_config(base, args, "seed")
                run["fedzge"] = fedzge_summary(read_rounds(run_server_app(cfg, args.clients)))
                if seed == args.seeds[0]:
                    cfg_t = {**fedzge_config(base, args, "tensor"),
                             "num-server-rounds": args.tensor_rounds}
                    run["fedzge-tensor"] = fedzge_summary(
                        read_rounds(run_server_app(cfg_t, args.clients))
                    )
                    # nothing but client evaluation depends on the round count: the seed
                    # run's accuracy at that round must equal the tensor run's, bit for bit
                    run["transport-equal-accuracy"] = (
                        run["fedzge"]["curve"][args.tensor_rounds]
                        == run["fedzge-tensor"]["global-acc-final"]
                    )
                fedavg = {**base, "strategy": "fedavg", "run-name": "fedavg"}
                run["fedavg"] = fedavg_summary(
                    read_rounds(run_server_app(fedavg, args.clients)), args.clients
                )
                run["local-only"], run["kd-real"] = local_only(load_config(cfg), args.clients)
                runs.append(run)
                atomic_write_json(args.out, results)
                print(f"alpha {alpha} seed {seed}: fedzge {run['fedzge']['global-acc-final']:.3f} "
                      f"fedavg {run['fedavg']['global-acc-final']:.3f} local-only "
                      f"{statistics.fmean(run['local-only']):.3f} kd-real {run['kd-real']:.3f} "
                      f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    results["load-avg-1m-end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - t_start
    atomic_write_json(args.out, results)
    plot(results, args.plot)
    report(results)


def report(results: dict[str, Any]) -> None:
    print(f"\n{'alpha':>6s} {'method':<16s}{'global final':>16s}{'clients before KD':>20s}"
          f"{'clients after KD':>20s}{'down B/client/rnd':>20s}{'up B/client/rnd':>18s}")
    for alpha, runs in results["runs"].items():
        rows = [
            ("local-only", "n/a", mean_std([statistics.fmean(r["local-only"]) for r in runs]),
             "n/a", "0", "0"),
            ("kd-real (diag.)", mean_std([r["kd-real"] for r in runs]), "n/a", "n/a", "n/a", "n/a"),
        ]
        for method in ("fedzge", "fedzge-tensor", "fedavg"):
            got = [r[method] for r in runs if method in r]
            if not got:
                continue
            rows.append((
                method + (" (seed)" if method == "fedzge" else ""),
                mean_std([g["global-acc-final"] for g in got]),
                mean_std([g.get("client-acc-before") for g in got]) if method != "fedavg" else "n/a",
                mean_std([g.get("client-acc-after") for g in got]) if method != "fedavg" else "n/a",
                f"{statistics.fmean(g['bytes-down-per-client-round'] for g in got):,.0f}",
                f"{statistics.fmean(g['bytes-up-per-client-round'] for g in got):,.0f}",
            ))
        for row in rows:
            print(f"{alpha:>6s} {row[0]:<16s}{row[1]:>16s}{row[2]:>20s}{row[3]:>20s}"
                  f"{row[4]:>20s}{row[5]:>18s}")
    t = results["cifar10-traffic"]
    mib, kib = 2**20, 2**10
    print(f"\nCIFAR-10 shapes (N=500, q=5, C=10), one round per client: "
          f"down {t['round-down-tensor'] / mib:.2f} MiB (tensor) / {t['round-down-seed'] / mib:.2f} "
          f"MiB (seed), up {t['round-up'] / kib:.1f} KiB; official 35.2 MiB / 117 KiB")


def markdown(results: dict[str, Any]) -> None:
    """The README table: mean ± std over seeds (population std), final round."""
    print("\n| alpha | method | global model, final round | clients before KD | clients after KD "
          "| down / client / round | up / client / round |")
    print("|---|---|---|---|---|---|---|")
    for alpha, runs in results["runs"].items():
        n = len(runs)
        local = mean_std([statistics.fmean(r["local-only"]) for r in runs])
        print(f"| {alpha} | local-only ({n} seeds) | n/a | {local} | n/a | 0 | 0 |")
        for method, label in (("fedzge", "FedZGE, `seed` transport"),
                              ("fedzge-tensor", "FedZGE, `tensor` transport"),
                              ("fedavg", "FedAvg, homogeneous `fedgen-cnn`")):
            got = [r[method] for r in runs if method in r]
            rounds = len(got[0]["curve"]) - 1
            label = f"{label} ({len(got)} seed{'s' if len(got) > 1 else ''}, {rounds} rounds)"
            kib = lambda key: f"{statistics.fmean(g[key] for g in got) / 1024:,.1f} KiB"
            before = mean_std([g.get("client-acc-before") for g in got]) if method == "fedzge" else "n/a"
            after = mean_std([g.get("client-acc-after") for g in got]) if method == "fedzge" else "n/a"
            acc = mean_std([g["global-acc-final"] for g in got])
            if method == "fedzge-tensor":
                same = all(r["transport-equal-accuracy"] for r in runs if method in r)
                acc += f" ({'equal to' if same else 'DIFFERENT from'} `seed` at round {rounds})"
            print(f"| {alpha} | {label} | {acc} "
                  f"| {before} | {after} | {kib('bytes-down-per-client-round')} "
                  f"| {kib('bytes-up-per-client-round')} |")
        print(f"| {alpha} | diagnostic: KD on real images ({n} seeds) "
              f"| {mean_std([r['kd-real'] for r in runs])} | n/a | n/a | n/a | n/a |")


if __name__ == "__main__":
    main()
