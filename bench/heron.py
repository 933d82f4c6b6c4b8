"""HERON-SFL vs CSE-FSL vs FedAvg-FO: client cost per local step, bytes per round, accuracy.

Paper: Kou, Chen, Yang, Shen, arXiv 2601.09076 (v1), Table II (docs/strategies/heron-sfl.md
(Settings and reference numbers)): on ResNet-18 / CIFAR-10 (B = 256) the HERON-SFL client needs
259.44 MB and 39.90 GFLOPs per local update against CSE-FSL's 726.46 MB and 59.85 GFLOPs (-64 %
/ -33 %), at "nearly identical" accuracy.

``costs``: ``resnet18-imagenet`` cut after the paper's stem (docs/strategies/heron-sfl.md
(Hyperparameters)), 32x32 RGB inputs, batch 256 and 64. Every (method, batch, repeat) runs in a
fresh subprocess with one torch thread; the client trainer measures its second local step (after
a warm-up step) with :func:`fedapp.task.metering.step_cost`, the same call for all three:

- ``heron``: ``split-zo`` on front + aux (forward difference, sphere, P = 1, Adam);
- ``cse-fsl``: ``split-fo`` on front + aux (backprop, Adam);
- ``fedavg``: the whole ResNet-18 trained first-order (backprop, Adam), measured
  through the same trainer with the full model as the "front" and no aux head.

Peak memory on CPU = parameters, buffers, gradients, optimizer state and the
batch live before the step, plus the PyTorch profiler's peak of the step's own
allocations net of frees (on CUDA: the allocator's peak). FLOPs are torch's
``FlopCounterMode`` (matmuls and convolutions). Bytes per round are the
serialised records of one client's ``train.split`` message and reply, for
10,000 local examples (CIFAR-10 over 5 clients), h = one epoch, k = 5.

``curves``: accuracy per round on ``mnist-offline`` (5 IID clients, FedGen's
MNIST CNN cut after its convolutions), all three methods with the same data,
rounds, batch and learning rates, in-process through the real ServerApp,
strategy and ClientApp handlers (:class:`fedapp.harness.InProcessGrid`).

Usage::

    python -m bench.heron costs --repeats 3
    python -m bench.heron curves --rounds 60
    python -m bench.heron report        # table + bench/figures/heron.png from the JSON files
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COSTS_JSON = RESULTS / "heron_costs.json"
CURVES_JSON = RESULTS / "heron_curves.json"
FIGURE = ROOT / "bench" / "figures" / "heron.png"
METHODS = ("heron", "cse-fsl", "fedavg")
LABELS = {"heron": "HERON-SFL (split-zo)", "cse-fsl": "CSE-FSL (split-fo)", "fedavg": "FedAvg-FO"}
COLORS = {"heron": "tab:blue", "cse-fsl": "tab:orange", "fedavg": "tab:green"}
PAPER = {"heron": (259.44, 39.90), "cse-fsl": (726.46, 59.85)}  # MB, GFLOPs per update


# -- costs: one local step in a fresh process ------------------------------------------------------


def one_step(method: str, batch: int) -> dict[str, Any]:
    """Run two local steps of ``method`` at ``batch``; return the second step's cost."""
    from torch import nn

    from clients.split import SplitFirstOrderTrainer, SplitPlan, SplitZerothOrderTrainer
    from fedapp.task.data import Arrays
    from fedapp.task.models import ImageSpec, build_model
    from fedapp.task.split import split_model

    torch.set_num_threads(1)
    spec = ImageSpec(3, 32, 32, 10)
    rng = np.random.default_rng(0)
    data = Arrays(
        rng.integers(0, 256, (2 * batch, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, 2 * batch).astype(np.int64),
    )
    plan = SplitPlan(server_round=1, local_steps=2, upload_every=5, batch_size=batch, lr=1e-4,
                     optimizer="adam", data_seed=1, direction_seed=2)
    model = build_model("resnet18-imagenet", spec, seed=0)
    if method == "fedavg":
        front, aux, trainer = model, nn.Identity(), SplitFirstOrderTrainer()
    else:
        parts = split_model(model, "resnet18-imagenet", spec)
        front, aux = parts.front, parts.aux
        trainer = SplitZerothOrderTrainer() if method == "heron" else SplitFirstOrderTrainer()
        del parts
    del model
    out = trainer.fit_split(front, aux, data, plan, torch.device("cpu"))
    return {
        "method": method, "batch": batch, "flops": out.step.flops,
        "peak-mem-mb": out.step.peak_mem_mb, "scope": out.step.scope,
        "process-peak-rss-mb": out.stats.peak_mem_mb,
        "forward-per-step": out.stats.forward_passes / out.steps,
        "backward-per-step": out.stats.backward_passes / out.steps,
        "s-per-step": out.stats.seconds / out.steps,
        "client-params": sum(p.numel() for p in nn.ModuleList([front, aux]).parameters()),
    }


def round_bytes() -> dict[str, dict[str, int]]:
    """Serialised bytes of one client's round at the paper's setting (analytic h, k, B)."""
    from flwr.app import ConfigRecord, RecordDict

    from fedapp.task.models import ImageSpec, build_model
    from fedapp.task.split import build_split
    from fedapp.wire import split as wire
    from fedapp.wire.common import (
        ARRAYS, CONFIG, ClientInfo, TrainMetrics, content_bytes, pack_arrays,
    )

    spec, batch, examples, k = ImageSpec(3, 32, 32, 10), 256, 10_000, 5
    steps = math.ceil(examples / batch)
    uploads = math.ceil(steps / k)
    parts = build_split("resnet18-imagenet", spec)
    front, aux = parts.front.state_dict(), parts.aux.state_dict()
    down = wire.encode_down(wire.SplitDown(1, 0, k, 1e-3, 1e-4, front, aux))
    n = uploads * batch
    up = wire.encode_up(
        front, aux, torch.zeros(n, *parts.cut_shape), torch.zeros(n, dtype=torch.int64),
        [batch] * uploads, wire.SplitMetrics(TrainMetrics(0, 0, 0, 0, 0, 0), 0, 0, 0, 0),
        ClientInfo(0, "split-zo", "resnet18-imagenet", [0] * 10),
    )
    full = pack_arrays(build_model("resnet18-imagenet", spec).state_dict())
    fedavg = content_bytes(RecordDict({ARRAYS: full, CONFIG: ConfigRecord()}))
    split = {"down": content_bytes(down), "up": content_bytes(up)}
    return {"heron": split, "cse-fsl": split, "fedavg": {"down": fedavg, "up": fedavg},
            "setting": {"examples": examples, "batch": batch, "steps": steps, "uploads": uploads}}


def costs(repeats: int) -> dict[str, Any]:
    rows = []
    for repeat in range(repeats):
        for batch in (256, 64):
            for method in METHODS:  # interleaved: load drifts hit every method
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.heron", "step", method, str(batch)],
                    cwd=ROOT, capture_output=True, text=True, check=True,
                    env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                )
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({**row, "repeat": repeat})
                print(f"  {method:8s} B={batch:3d} peak {row['peak-mem-mb']:8.2f} MiB  "
                      f"{row['flops'] / 1e9:7.3f} GFLOPs", flush=True)
    summary: dict[str, Any] = {}
    for batch in (256, 64):
        for method in METHODS:
            sel = [r for r in rows if r["method"] == method and r["batch"] == batch]
            summary[f"{method}@{batch}"] = {
                key: statistics.median(r[key] for r in sel)
                for key in ("peak-mem-mb", "flops", "process-peak-rss-mb", "s-per-step",
                            "forward-per-step", "backward-per-step", "client-params")
            }
    return {"rows": rows, "median": summary, "bytes": round_bytes(), "machine": machine()}


# -- curves: accuracy per round, in process ----------------------------------------------------------


def curve(method: str, rounds: int, out: Path) -> list[dict[str, Any]]:
    from flwr.app import Context, RecordDict

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import pyproject_run_config
    from fedapp.harness import InProcessGrid

    from fedapp.client_app import app as client_app
    from fedapp.results import read_rounds
    from fedapp.server_app import main as server_main

    torch.set_num_threads(1)
    cfg = pyproject_run_config() | {
        "output-dir": str(out), "run-name": method, "num-server-rounds": rounds,
        "data.partition": "iid", "data.local-test-size": 0.0, "server.fraction-evaluate": 0.0,
        "data.cache-dir": str(ROOT / ".pytest_cache" / "fedzg-data"),
        "heron.batch-size": 32, "heron.client-lr": 1e-3, "heron.server-lr": 1e-3,
        "client.optimizer": "adam", "client.lr": 1e-3, "client.batch-size": 32,
    }
    cfg |= {
        "heron": {"strategy": "heron-sfl", "client.trainer": "split-zo"},
        "cse-fsl": {"strategy": "heron-sfl", "client.trainer": "split-fo"},
        "fedavg": {"strategy": "fedavg", "client.trainer": "fo"},
    }[method]
    grid = InProcessGrid(client_app, cfg, 5)
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                              run_config=cfg))
    return read_rounds(out / method)


def curves(rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"rounds": rounds, "machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            t0 = time.perf_counter()
            rows = curve(method, rounds, Path(tmp))
            result["runs"][method] = {"rows": rows, "seconds": time.perf_counter() - t0}
            print(f"  {method}: final accuracy {rows[-1]['accuracy']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            write(CURVES_JSON, result)
    return result


# -- report ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch-threads": 1, "torch": torch.__version__,
            "load-avg-1m": os.getloadavg()[0], "device": "cpu"}


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def first_round_reaching(rows: list[dict[str, Any]], level: float) -> int | None:
    return next((r["round"] for r in rows if r["accuracy"] >= level), None)


def report() -> None:
    lines = []
    if COSTS_JSON.is_file():
        c = json.loads(COSTS_JSON.read_text())
        med = c["median"]
        lines.append("| method | batch | peak memory / step (MiB) | GFLOPs / step | fwd / bwd per step | bytes down / up per round (MiB) |")
        lines.append("|---|---|---|---|---|---|")
        for batch in (256, 64):
            for m in METHODS:
                r, b = med[f"{m}@{batch}"], c["bytes"][m]
                lines.append(
                    f"| {LABELS[m]} | {batch} | {r['peak-mem-mb']:.1f} | {r['flops'] / 1e9:.2f} | "
                    f"{r['forward-per-step']:.0f} / {r['backward-per-step']:.0f} | "
                    f"{b['down'] / 2**20:.2f} / {b['up'] / 2**20:.2f} |"
                )
        for batch in (256, 64):
            h, f = med[f"heron@{batch}"], med[f"cse-fsl@{batch}"]
            lines.append(
                f"\nB={batch}: HERON/CSE-FSL memory ratio {h['peak-mem-mb'] / f['peak-mem-mb']:.3f} "
                f"(paper {PAPER['heron'][0] / PAPER['cse-fsl'][0]:.3f}), FLOPs ratio "
                f"{h['flops'] / f['flops']:.3f} (paper {PAPER['heron'][1] / PAPER['cse-fsl'][1]:.3f})"
            )
    if CURVES_JSON.is_file():
        cu = json.loads(CURVES_JSON.read_text())
        lines.append("\n| method | final accuracy | best | first round >= 0.8 | >= 0.9 | final aux-acc | run s |")
        lines.append("|---|---|---|---|---|---|---|")
        for m in (m for m in METHODS if m in cu["runs"]):
            run = cu["runs"][m]
            rows = run["rows"]
            lines.append(
                f"| {LABELS[m]} | {rows[-1]['accuracy']:.4f} | {max(r['accuracy'] for r in rows):.4f} | "
                f"{first_round_reaching(rows, 0.8)} | {first_round_reaching(rows, 0.9)} | "
                f"{rows[-1].get('aux-acc', float('nan')):.4f} | {run['seconds']:.0f} |"
            )
    print("\n".join(lines))
    plot()


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if CURVES_JSON.is_file():
        cu = json.loads(CURVES_JSON.read_text())
        for m in (m for m in METHODS if m in cu["runs"]):
            rows = cu["runs"][m]["rows"]
            axes[0].plot([r["round"] for r in rows], [r["accuracy"] for r in rows],
                         color=COLORS[m], label=LABELS[m])
            if "aux-acc" in rows[-1]:
                axes[0].plot([r["round"] for r in rows[1:]], [r["aux-acc"] for r in rows[1:]],
                             ls=":", color=COLORS[m], label=f"{LABELS[m]} aux head")
        axes[0].set(xlabel="round", ylabel="test accuracy (front + back)", ylim=(0, 1),
                    title="mnist-offline, fedgen-cnn, 5 IID clients")
        axes[0].legend(fontsize=7)
    if COSTS_JSON.is_file():
        med = json.loads(COSTS_JSON.read_text())["median"]
        x = np.arange(2)
        for i, m in enumerate(METHODS):
            mem = [med[f"{m}@{b}"]["peak-mem-mb"] for b in (256, 64)]
            fl = [med[f"{m}@{b}"]["flops"] / 1e9 for b in (256, 64)]
            axes[1].bar(x + 0.27 * (i - 1), mem, 0.27, color=COLORS[m], label=LABELS[m])
            axes[2].bar(x + 0.27 * (i - 1), fl, 0.27, color=COLORS[m], label=LABELS[m])
        for ax, what in ((axes[1], "client peak memory / step (MiB)"),
                         (axes[2], "client GFLOPs / step")):
            ax.set(xticks=x, xticklabels=["B=256", "B=64"], ylabel=what,
                   title="ResNet-18 (paper cut), 32x32")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    print(f"figure: {FIGURE.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    step = sub.add_parser("step", help="internal: one measured step in this process")
    step.add_argument("method", choices=METHODS)
    step.add_argument("batch", type=int)
    sub.add_parser("costs").add_argument("--repeats", type=int, default=3)
    sub.add_parser("curves").add_argument("--rounds", type=int, default=60)
    sub.add_parser("report")
    args = parser.parse_args()
    if args.cmd == "step":
        print(json.dumps(one_step(args.method, args.batch)))
    elif args.cmd == "costs":
        write(COSTS_JSON, costs(args.repeats))
        report()
    elif args.cmd == "curves":
        curves(args.rounds)
        report()
    else:
        report()


if __name__ == "__main__":
    main()
