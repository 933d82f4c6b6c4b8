"""FedZGE benchmark (issue 15): clean vs official-style evaluation, frozen vs ZO-trained
generator, global-model normalisation, against local-only clients and FedAvg.

Every *cell* is one (dataset, Dirichlet alpha, seed, method) run on the same partition
(10 clients, plain Dirichlet split as officially, docs/evaluation.md (Dirichlet partition)), in-process through the
real ServerApp/ClientApp code (:mod:`fedapp.harness`; no Ray). Cells run in parallel
processes (``--jobs``) and each writes ``<out>.cells/<cell>.json`` the moment it ends,
so an interrupted run keeps what it finished (``--resume`` skips those cells).

Methods (:data:`METHODS`):

- ``local-only``: every client trains its private model alone, exactly FedZGE's local
  phase (architecture, initialisation, data order, E1 epochs of Adam per round) and no
  distillation; the clients' mean test accuracy. Its cell also runs the ``kd-real``
  diagnostic: the local-only ensemble labels N *real* training images and a fresh
  global model distils from them for E2·R steps (the ceiling of the KD path if the
  synthetic images were as good as real ones).
- ``fedzge``: the pyproject defaults (what a user gets with ``strategy = "fedzge"``).
  Headline: the global model in eval mode at the final round, BatchNorm statistics
  that never saw test data (``accuracy``). Beside it, labelled, the official-style
  number (``accuracy-official-style``: BatchNorm statistics of the test batches, best
  of the E2 server KD steps; never used to select anything), and the clients' mean
  accuracy before and after the final round's local KD.
- ``fedzge-frozen``: the same with ``fedzge.generator-lr = 0`` (generator left at its
  random initialisation): what the zeroth-order generator training adds.
- ``fedzge-official``: the official code's choices (one fresh-Adam step per round,
  batch-level estimator, tanh images, local KD moving the BN statistics), batch-stat
  answers; ``fedzge-eval-answers``: the same answered in eval mode (the old default).
- ``fedzge-global-*``: the global model's normalisation. ``fedzge`` itself runs the
  default ``fedgen-cnn`` with the BatchNorm statistics its KD on synthetic images left;
  ``bn-synth`` re-estimates them from fresh synthetic batches, ``gn`` is the GroupNorm
  variant, ``mlp`` has no normalisation.
- ``fedzge-tensor`` (first seed, ``--tensor-rounds`` rounds): the official transport,
  for bytes; it must reproduce ``fedzge``'s accuracy at that round bit for bit.
- ``fedavg``: Flower's FedAvg with a homogeneous ``fedgen-cnn`` (pyproject defaults).

Usage (CPU smoke; the full matrix on a GPU machine is in docs/_fedzge_sections.md)::

    python -m bench.fedzge --datasets digits --rounds 5 --seeds 0 --alphas 1.0 --jobs 2
    python -m bench.fedzge --report
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from bench.flwr_cli import ROOT
from clients.fedzge import accuracy, local_update
from clients.fo import FirstOrderTrainer
from clients.plans import fedzge_plan, resolve_node
from fedapp.config import AppConfig, NodeConfig, load_config
from fedapp.harness import default_run_config, run_federation
from fedapp.results import atomic_write_json
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

#: Client architectures (``model.clients``): homogeneous BatchNorm CNNs, as the official
#: homogeneous setting (BN clients are where the answering mode matters), or FedZGE's
#: heterogeneous case: one ``cnn``, then ``fedgen-cnn`` and ``mlp`` alternating.
CLIENT_ZOOS = {
    "homogeneous": "fedgen-cnn",
    "heterogeneous": "cnn,fedgen-cnn,mlp,fedgen-cnn,mlp,fedgen-cnn,mlp,fedgen-cnn,mlp,fedgen-cnn",
}

#: The official code's choices where fedzg offers others (answers: batch statistics).
OFFICIAL = {
    "fedzge.generator-lr": 0.001,
    "fedzge.beta-adv": 1.0,
    "fedzge.generator-steps": 1,
    "fedzge.generator-optimizer": "fresh",
    "fedzge.estimator": "batch",
    "fedzge.image-range": "tanh",
    "fedzge.client-kd-bn": "update",
    "fedzge.answer-bn": "batch",
}

#: FedZGE variants: run-config overrides on top of the pyproject defaults (whose global
#: model, ``model.name = "fedgen-cnn"``, keeps the BatchNorm statistics the server KD left).
VARIANTS: dict[str, dict[str, Any]] = {
    "fedzge": {},
    "fedzge-frozen": {"fedzge.generator-lr": 0.0},
    "fedzge-official": OFFICIAL,
    "fedzge-eval-answers": {**OFFICIAL, "fedzge.answer-bn": "running"},
    "fedzge-global-bn-synth": {"fedzge.global-bn": "synthetic"},
    "fedzge-global-gn": {"model.name": "fedgen-cnn-gn"},
    "fedzge-global-mlp": {"model.name": "mlp"},
    "fedzge-tensor": {"fedzge.direction-transport": "tensor"},
}
METHODS = ("local-only", "fedavg", *VARIANTS)
#: The default matrix, in the order its cells start: what the issue's goals need first.
DEFAULT_METHODS = ("local-only", "fedzge", "fedzge-frozen", "fedavg", "fedzge-official",
                   "fedzge-global-gn", "fedzge-global-bn-synth", "fedzge-tensor")


# -- one cell ------------------------------------------------------------------------------


def base_config(args: argparse.Namespace, dataset: str, alpha: float, seed: int) -> dict[str, Any]:
    return {
        **default_run_config(),
        "seed": seed,
        "num-server-rounds": args.rounds,
        "data.dataset": dataset,
        "data.alpha": alpha,
        "data.min-partition-size": 0,  # docs/evaluation.md (Dirichlet partition): FedZGE's plain Dirichlet split
        "server.fraction-evaluate": 0.0,
        "client.device": args.device,
        "model.clients": CLIENT_ZOOS[args.zoo],
        "fedzge.client-eval": "final",
        **({"fedzge.synthetic-samples": args.synthetic} if args.synthetic else {}),
        **dict(args.set),
    }


def fedzge_cell(cfg: dict[str, Any], args: argparse.Namespace, method: str) -> dict[str, Any]:
    cfg = {**cfg, "strategy": "fedzge", **VARIANTS[method]}
    if method == "fedzge-tensor":
        cfg["num-server-rounds"] = args.tensor_rounds
    rows = run_federation(cfg, args.clients)
    last = rows[-1]
    trained = [r for r in rows if r["round"] >= 1]
    mean = lambda key: statistics.fmean(r[key] for r in trained)  # noqa: E731
    return {
        "global-clean": last["accuracy"],
        "global-official-style": last.get("accuracy-official-style"),
        "global-batch-stats": last.get("accuracy-batch-stats"),
        "global-official-style-best-round": max(
            (r.get("accuracy-official-style", float("nan")) for r in trained), default=None
        ),
        "client-acc-before": last.get("client-acc-before"),
        "client-acc-after": last.get("client-acc-after"),
        "bytes-down-per-client-round": mean("bytes-down-per-client"),
        "bytes-up-per-client-round": mean("bytes-up-per-client"),
        "query-bytes-down-per-client-round": mean("query-bytes-down-per-client"),
        "query-bytes-up-per-client-round": mean("query-bytes-up-per-client"),
        "generator-loss": [r.get("generator-loss") for r in trained],
        "generator-terms": [{k[len("generator-"):]: r[k] for k in r
                             if k.startswith("generator-") and k != "generator-loss"}
                            for r in trained],
        "skipped-rounds": sum(int(r.get("skipped", 0)) for r in trained),
        "curve": [r["accuracy"] for r in rows],
        "curve-official-style": [r.get("accuracy-official-style") for r in trained],
        "round-s": mean("wall-s"),
        "config": {k: cfg[k] for k in sorted(cfg) if k.startswith(("fedzge.", "model."))},
    }


def fedavg_cell(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rows = run_federation({**cfg, "strategy": "fedavg", "model.clients": ""}, args.clients)
    trained = [r for r in rows if r["round"] >= 1]
    return {
        "global-clean": rows[-1]["accuracy"],
        "bytes-down-per-client-round": statistics.fmean(r["bytes-down"] for r in trained)
        / args.clients,
        "bytes-up-per-client-round": statistics.fmean(r["bytes-up"] for r in trained)
        / args.clients,
        "curve": [r["accuracy"] for r in rows],
        "round-s": statistics.fmean(r["wall-s"] for r in trained),
    }


def local_only_cell(cfg_flat: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Each client alone for R rounds of FedZGE's local phase; then the kd-real diagnostic."""
    cfg: AppConfig = load_config({**cfg_flat, "strategy": "fedzge"})
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    test, spec = load_server_test(cfg.data, cfg.seed)
    accs, models, sizes, images = [], [], [], []
    for pid in range(args.clients):
        data = load_client_data(cfg.data, cfg.seed, pid, args.clients)
        model = build_model(cfg.model.for_partition(pid), data.spec,
                            seed=derive_seed(cfg.seed, PURPOSE_INIT, pid + 1))
        node = resolve_node(NodeConfig(partition_id=pid, num_partitions=args.clients), cfg)
        for rnd in range(1, cfg.num_server_rounds + 1):
            local_update(model, data.train, fedzge_plan(cfg, node, rnd), device,
                         FirstOrderTrainer())
        accs.append(accuracy(model, test, cfg.server.eval_batch_size, device))
        models.append(model)
        sizes.append(len(data.train))
        images.append(torch.from_numpy(data.train.x).float() / 255.0)
    z = cfg.fedzge
    pool = torch.cat(images)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = pool[torch.randperm(len(pool), generator=gen)[: z.synthetic_samples]].to(device)
    none = x.unsqueeze(0)[:0]  # no perturbed copies: (0, N, *img)
    teacher = ensemble_logits(
        [answer_queries(m, x, none, "running").cpu() for m in models], sizes
    )[0]
    student = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    student.to(device)
    distill(student, x, teacher.to(device), z.temperature, z.server_steps * cfg.num_server_rounds,
            z.server_lr)
    return {
        "clients": accs,
        "global-clean": statistics.fmean(accs),
        "kd-real": accuracy(student, test, cfg.server.eval_batch_size, device),
        "kd-real-model": cfg.model.name,
    }


def run_cell(cell: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One cell in a worker process: its result, also written to its own JSON file."""
    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = base_config(args, cell["dataset"], cell["alpha"], cell["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg |= {"output-dir": tmp, "run-name": cell["method"]}
        try:
            if cell["method"] == "local-only":
                result = local_only_cell(cfg, args)
            elif cell["method"] == "fedavg":
                result = fedavg_cell(cfg, args)
            else:
                result = fedzge_cell(cfg, args, cell["method"])
        except Exception:  # a failed cell is recorded, the rest of the matrix goes on
            result = {"error": traceback.format_exc()}
    out = {**cell, **result, "seconds": time.perf_counter() - t0,
           "cpu-seconds": time.process_time() - c0}
    atomic_write_json(cell_path(args.out, cell), out)
    return out


def cell_path(out: Path, cell: dict[str, Any]) -> Path:
    name = f"{cell['dataset']}-a{cell['alpha']}-s{cell['seed']}-{cell['method']}.json"
    return out.with_suffix(".cells") / name


# -- the matrix ---------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All cells, in the order of ``--methods`` (the goals' cells first), mnist before digits."""
    cells = []
    for method, dataset, alpha, seed in itertools.product(
        args.methods, args.datasets, args.alphas, args.seeds
    ):
        if method == "fedzge-tensor" and seed != args.seeds[0]:
            continue
        cells.append({"dataset": dataset, "alpha": alpha, "seed": seed, "method": method})
    return cells


def collect(args: argparse.Namespace) -> dict[str, Any]:
    cells = []
    for path in sorted(args.out.with_suffix(".cells").glob("*.json")):
        cells.append(json.loads(path.read_text()))
    return {"setup": setup(args), "cells": cells,
            "cifar10-traffic": cifar_traffic(), "load-avg-1m": os.getloadavg()[0]}


def setup(args: argparse.Namespace) -> dict[str, Any]:
    keep = ("rounds", "seeds", "alphas", "datasets", "clients", "zoo", "synthetic", "device",
            "jobs", "threads", "tensor_rounds", "methods", "set")
    return {
        **{k: getattr(args, k) for k in keep},
        "client-models": CLIENT_ZOOS[args.zoo],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_matrix(args: argparse.Namespace) -> None:
    cells = plan(args)
    if args.resume:
        cells = [c for c in cells if not cell_path(args.out, c).exists()]
    else:
        for old in args.out.with_suffix(".cells").glob("*.json"):
            old.unlink()
    print(f"{len(cells)} cells, {args.jobs} job(s), device {args.device}", flush=True)
    t0 = time.perf_counter()
    ctx = get_context("spawn")  # CUDA needs spawned workers
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        pending: set[Future[dict[str, Any]]] = {pool.submit(run_cell, c, args) for c in cells}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                r = fut.result()
                tag = "ERROR" if "error" in r else f"{r.get('global-clean', float('nan')):.3f}"
                print(f"[{time.perf_counter() - t0:6.0f} s] {r['dataset']} a={r['alpha']} "
                      f"s={r['seed']} {r['method']}: {tag} ({r['seconds']:.0f} s)", flush=True)
            atomic_write_json(args.out, collect(args))
    results = collect(args)
    results["seconds"] = time.perf_counter() - t0
    atomic_write_json(args.out, results)
    report(results)


# -- traffic at CIFAR-10 shapes ------------------------------------------------------------


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
    soft = wire.encode_distill(wire.DistillDown(1, torch.zeros(n, classes), 5.0, 10))
    b = content_bytes
    other_down = b(config_message(1)) + b(soft)
    other_up = b(local_reply) + b(distill_reply)
    return {
        "query-down-seed": b(seed_query),
        "query-down-tensor": b(tensor_query),
        "query-up": b(logits),
        "distill-down": b(soft),
        "round-down-seed": b(seed_query) + other_down,
        "round-down-tensor": b(tensor_query) + other_down,
        "round-up": b(logits) + other_up,
    }


# -- report --------------------------------------------------------------------------------


def mean_std(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    return f"{statistics.fmean(got):.3f} ± {statistics.pstdev(got):.3f}"


COLUMNS = (
    ("global (clean)", "global-clean"),
    ("official-style", "global-official-style"),
    ("off.-style, best rnd", "global-official-style-best-round"),
    ("clients before", "client-acc-before"),
    ("clients after", "client-acc-after"),
)


def groups(results: dict[str, Any]) -> dict[tuple[str, float], dict[str, list[dict[str, Any]]]]:
    out: dict[tuple[str, float], dict[str, list[dict[str, Any]]]] = {}
    for c in results["cells"]:
        if "error" not in c:
            out.setdefault((c["dataset"], c["alpha"]), {}).setdefault(c["method"], []).append(c)
    return out


def report(results: dict[str, Any]) -> None:
    """Mean ± std (population) over seeds; KiB per client per round; final round."""
    print("\nheadline: global model in eval mode, statistics never from test data, final "
          "round.\nofficial-style: BN statistics of the test batches, best of the E2 server "
          "KD steps of the final round; best rnd: also the best round (diagnostics only).")
    head = f"{'method':<26s}" + "".join(f"{h:>21s}" for h, _ in COLUMNS)
    for (dataset, alpha), methods in sorted(groups(results).items()):
        print(f"\n{dataset}, Dirichlet {alpha}\n{head}{'kd-real (diag.)':>17s}{'down KiB':>10s}"
              f"{'up KiB':>9s}{'round s':>9s}")
        for method in [m for m in METHODS if m in methods]:
            got = methods[method]
            cols = [mean_std([g.get(key) for g in got]) for _, key in COLUMNS]
            if method == "local-only":
                cols = ["n/a", "n/a", "n/a", cols[0], "n/a"]
            kd = mean_std([g.get("kd-real") for g in got]) if method == "local-only" else ""
            kib = lambda k: (f"{statistics.fmean(g[k] for g in got) / 1024:.1f}"  # noqa: E731
                             if k in got[0] else "")
            secs = (f"{statistics.fmean(g['round-s'] for g in got):.2f}"
                    if "round-s" in got[0] else "")
            print(f"{method + f' ({len(got)})':<26s}" + "".join(f"{c:>21s}" for c in cols)
                  + f"{kd:>17s}{kib('bytes-down-per-client-round'):>10s}"
                  f"{kib('bytes-up-per-client-round'):>9s}{secs:>9s}")
    goals(results)
    transport(results)
    t = results["cifar10-traffic"]
    mib, kib = 2**20, 2**10
    print(f"\nCIFAR-10 shapes (N=500, q=5, C=10), one round per client: down "
          f"{t['round-down-tensor'] / mib:.2f} MiB (tensor) / {t['round-down-seed'] / mib:.2f} MiB "
          f"(seed), up {t['round-up'] / kib:.1f} KiB; official 35.2 MiB / 117 KiB")


def transport(results: dict[str, Any]) -> None:
    """``tensor`` transport must reproduce ``seed`` transport's global accuracy bit for bit."""
    cells = {(c["dataset"], c["alpha"], c["seed"], c["method"]): c
             for c in results["cells"] if "error" not in c}
    for (dataset, alpha, seed, method), c in sorted(cells.items()):
        seed_run = cells.get((dataset, alpha, seed, "fedzge"))
        if method != "fedzge-tensor" or seed_run is None:
            continue
        rounds = len(c["curve"]) - 1
        same = seed_run["curve"][rounds] == c["global-clean"]
        key = "query-bytes-down-per-client-round"
        ratio = c[key] / seed_run[key]
        print(f"  {dataset}, alpha {alpha}, seed {seed}: tensor transport at round {rounds} "
              f"{'EQUALS' if same else 'DIFFERS FROM'} seed transport; query downlink x{ratio:.2f}")


def goals(results: dict[str, Any]) -> None:
    """Issue 15's goals on the mean over seeds, clean evaluation."""
    print("\ngoals (clean evaluation, mean over seeds):")
    for (dataset, alpha), m in sorted(groups(results).items()):
        mean = lambda method, key: (  # noqa: E731
            statistics.fmean(g[key] for g in m[method] if g.get(key) is not None)
            if method in m and any(g.get(key) is not None for g in m[method]) else None
        )
        local = mean("local-only", "global-clean")
        after = mean("fedzge", "client-acc-after")
        glob = mean("fedzge", "global-clean")
        frozen = mean("fedzge-frozen", "global-clean")
        frozen_after = mean("fedzge-frozen", "client-acc-after")
        lines = []
        if local is not None and after is not None:
            lines.append(f"clients after KD - local-only = {after - local:+.3f} (goal >= +0.010)")
        if local is not None and glob is not None:
            lines.append(f"global - local-only = {glob - local:+.3f} (goal >= 0 at alpha 1.0)")
        if glob is not None and frozen is not None:
            lines.append(f"ZO-trained - frozen generator: global {glob - frozen:+.3f}"
                         + (f", clients after KD {after - frozen_after:+.3f}"
                            if after is not None and frozen_after is not None else ""))
        off = mean("fedzge", "global-official-style")
        if off is not None and glob is not None:
            lines.append(f"official-style - clean (global) = {off - glob:+.3f}")
        print(f"  {dataset}, alpha {alpha}: " + "; ".join(lines))


def _value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, booleans, quoted strings) or a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--datasets", nargs="+", default=["mnist-offline", "digits"])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--zoo", choices=sorted(CLIENT_ZOOS), default="homogeneous")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="N synthetic images per round (0: the pyproject default)")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="extra run-config override for every cell (JSON value)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--tensor-rounds", type=int, default=2,
                        help="rounds of the tensor-transport cell (bytes and equality only)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fedzge.json")
    parser.add_argument("--resume", action="store_true", help="keep finished cells' JSON files")
    parser.add_argument("--report", action="store_true", help="only print the tables from --out")
    args = parser.parse_args()
    args.set = [(k, _value(v)) for k, v in args.set]
    if args.report:
        report(json.loads(args.out.read_text()))
        return
    run_matrix(args)


if __name__ == "__main__":
    main()
