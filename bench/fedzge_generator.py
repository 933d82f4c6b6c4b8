"""Does the zeroth-order generator earn its place? FedZGE's server side with the clients held fixed.

The full benchmark (:mod:`bench.fedzge`) mixes three learners: the clients train
and distil every round, and that noise hides the generator's effect on the global
model. Here every client first trains alone (E1 epochs for ``--pretrain-rounds``
rounds, as the local-only baseline), and then the *real* FedZGE strategy and ClientApp
run with ``fedzge.local-epochs = 0`` and ``fedzge.distill-steps = 0``. The clients then
only answer queries, so the round is synthesis, queries, generator steps and server KD,
all through the production code. Each generator configuration in :data:`GENERATORS` is
compared with ``frozen`` (``generator-lr = 0``) on the same clients, latents and
directions. Headline: the global model's clean accuracy (eval mode, never test-batch
statistics), final round and mean of the last 5 rounds.

Usage::

    python -m bench.fedzge_generator --rounds 40 --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from bench.flwr_cli import ROOT
from clients.fedzge import accuracy, local_update
from clients.fo import FirstOrderTrainer
from clients.plans import fedzge_plan, resolve_node
from fedapp.config import NodeConfig, load_config
from fedapp.harness import InProcessGrid, default_run_config
from fedapp.results import ResultsWriter, atomic_write_json, read_rounds, run_dir
from fedapp.task.data import load_client_data, load_server_test
from fedapp.task.models import build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.wire import fedzge as wire
from fedapp.wire.common import save_state

#: The official generator update, and fedzg's levers on top of it (docs/strategies/fedzge.md (Generator loss and ZO estimator), issue 15).
OFFICIAL = {"fedzge.estimator": "batch", "fedzge.generator-steps": 1,
            "fedzge.generator-optimizer": "fresh", "fedzge.generator-lr": 0.001,
            "fedzge.beta-adv": 1.0}
LEVERS = {"fedzge.estimator": "per-sample", "fedzge.generator-steps": 5,
          "fedzge.generator-optimizer": "persistent", "fedzge.generator-lr": 0.0001}
GENERATORS: dict[str, dict[str, Any]] = {
    "frozen": {**OFFICIAL, "fedzge.generator-lr": 0.0},
    "official": OFFICIAL,
    "per-sample": {**OFFICIAL, "fedzge.estimator": "per-sample"},
    "per-sample-5-persistent-1e-3": {**LEVERS, "fedzge.generator-lr": 0.001,
                                     "fedzge.beta-adv": 1.0},
    "per-sample-5-persistent": {**LEVERS, "fedzge.beta-adv": 1.0},
    "per-sample-5-persistent-q20": {**LEVERS, "fedzge.beta-adv": 1.0, "fedzge.num-directions": 20},
    "per-sample-5-persistent-adv25": {**LEVERS, "fedzge.beta-adv": 25.0},
    "per-sample-1-persistent-adv25": {**LEVERS, "fedzge.generator-steps": 1,
                                      "fedzge.beta-adv": 25.0},
    "per-sample-5-persistent-adv25-small": {**LEVERS, "fedzge.beta-adv": 25.0,
                                            "fedzge.generator-width": 16, "fedzge.latent-dim": 16},
}


def pretrain(flat: dict[str, Any], clients: int, rounds: int) -> list[dict[str, torch.Tensor]]:
    """Each client's private model after ``rounds`` rounds of FedZGE's local phase, alone."""
    cfg = load_config({**flat, "strategy": "fedzge"})
    device = torch.device("cuda" if flat["client.device"] == "cuda" else "cpu")
    states = []
    for pid in range(clients):
        data = load_client_data(cfg.data, cfg.seed, pid, clients)
        model = build_model(cfg.model.for_partition(pid), data.spec,
                            seed=derive_seed(cfg.seed, PURPOSE_INIT, pid + 1))
        node = resolve_node(NodeConfig(partition_id=pid, num_partitions=clients), cfg)
        for rnd in range(1, rounds + 1):
            local_update(model, data.train, fedzge_plan(cfg, node, rnd), device,
                         FirstOrderTrainer())
        states.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return states


def server_side(
    flat: dict[str, Any], states: list[dict[str, torch.Tensor]]
) -> list[dict[str, Any]]:
    """The real FedZGE strategy and ClientApp, clients preloaded with ``states`` and frozen."""
    from fedapp.client_app import app as client_app
    from fedapp.server_app import federate

    cfg = load_config(flat)
    _, spec = load_server_test(cfg.data, cfg.seed)
    model = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    grid = InProcessGrid(client_app, flat, len(states), record=False)
    for i, state in enumerate(states):
        save_state(grid.contexts[100 + i].state, wire.FEDZGE_MODEL, state)
    writer = ResultsWriter(run_dir(cfg.output_dir, cfg.run_name), {"config": flat})
    federate(grid, cfg, model, writer)
    return read_rounds(Path(writer.dir))


def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """Every generator configuration on one seed's pre-trained clients."""
    torch.set_num_threads(args.threads)
    flat = {
        **default_run_config(), "strategy": "fedzge", "seed": seed,
        "num-server-rounds": args.rounds, "data.dataset": args.dataset,
        "data.alpha": args.alpha, "data.min-partition-size": 0,
        "server.fraction-evaluate": 0.0, "client.device": args.device,
        "model.name": args.global_model, "model.clients": "fedgen-cnn",
        "fedzge.client-eval": "none", "fedzge.image-range": "unit",
        **dict(args.set),
    }
    states = pretrain(flat, args.clients, args.pretrain_rounds)
    test, spec = load_server_test(load_config(flat).data, seed)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    local = []
    for state in states:
        m = build_model("fedgen-cnn", spec)
        m.load_state_dict(state)
        local.append(accuracy(m, test, 500, device))
    out = []
    for name in args.generators:
        t0 = time.perf_counter()
        cfg = {**flat, **GENERATORS[name], "fedzge.local-epochs": 0, "fedzge.distill-steps": 0,
               "run-name": name}
        with tempfile.TemporaryDirectory() as tmp:
            rows = server_side({**cfg, "output-dir": tmp}, states)
        curve = [r["accuracy"] for r in rows if r["round"] >= 1]
        off = [r.get("accuracy-official-style") for r in rows if r["round"] >= 1]
        out.append({"seed": seed, "generator": name, "local-only": statistics.fmean(local),
                    "final": curve[-1], "last5": statistics.fmean(curve[-5:]),
                    "official-style-final": off[-1], "curve": curve,
                    "generator-loss": [r.get("generator-loss") for r in rows if r["round"] >= 1],
                    "seconds": time.perf_counter() - t0})
        print(f"seed {seed} {name}: final {curve[-1]:.3f} last5 {out[-1]['last5']:.3f} "
              f"({out[-1]['seconds']:.0f} s)", flush=True)
    return out


def report(results: dict[str, Any]) -> None:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        by.setdefault(r["generator"], []).append(r)
    frozen = {r["seed"]: r for r in by.get("frozen", [])}
    s = results["setup"]
    print(f"\n{s['dataset']}, Dirichlet {s['alpha']}, {s['rounds']} server rounds, clients "
          f"pre-trained {s['pretrain_rounds']} rounds; global model {s['global']}; clean accuracy")
    print(f"{'generator':<40s}{'final':>16s}{'last 5 rounds':>16s}{'minus frozen':>14s}"
          f"{'official-style':>16s}")
    ms = lambda v: f"{statistics.fmean(v):.3f} ± {statistics.pstdev(v):.3f}"  # noqa: E731
    for name, runs in by.items():
        gap = [r["last5"] - frozen[r["seed"]]["last5"] for r in runs if r["seed"] in frozen]
        print(f"{name:<40s}{ms([r['final'] for r in runs]):>16s}"
              f"{ms([r['last5'] for r in runs]):>16s}"
              f"{(f'{statistics.fmean(gap):+.3f}' if gap else ''):>14s}"
              f"{ms([r['official-style-final'] for r in runs]):>16s}")
    local = [r["local-only"] for r in by[next(iter(by))]]
    print(f"{'local-only clients (mean)':<40s}{ms(local):>16s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--pretrain-rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--global-model", default="fedgen-cnn-gn")
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "fedzge-generator.json")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.out.read_text()))
        return
    args.set = [(k, _value(v)) for k, v in args.set]
    setup = {k: getattr(args, k) for k in ("dataset", "alpha", "seeds", "rounds",
                                           "pretrain_rounds", "clients", "generators", "device",
                                           "set")}
    setup |= {"global": args.global_model, "cpus": os.cpu_count(), "torch": torch.__version__}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        runs = list(itertools.chain.from_iterable(
            pool.map(run_seed, itertools.repeat(args), args.seeds)))
    results = {"setup": setup, "runs": runs, "seconds": time.perf_counter() - t0}
    atomic_write_json(args.out, results)
    report(results)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


if __name__ == "__main__":
    main()
