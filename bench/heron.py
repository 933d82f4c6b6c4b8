"""HERON-SFL vs CSE-FSL vs FedAvg-FO: client cost per local step, bytes per round, accuracy.

Paper: Kou, Chen, Yang, Shen, arXiv 2601.09076 (v1), Table II (docs/strategies/heron-sfl.md
(Settings and reference numbers)): on ResNet-18 / CIFAR-10 (B = 256) the HERON-SFL client needs
259.44 MB and 39.90 GFLOPs per local update against CSE-FSL's 726.46 MB and 59.85 GFLOPs (-64 %
/ -33 %), at "nearly identical" accuracy.

``costs``: two cuts of ResNet-18 on 32x32 RGB inputs, batch 256 and 64:

- ``imagenet``: ``resnet18-imagenet`` cut after the ImageNet stem (docs/strategies/heron-sfl.md (Hyperparameters),
  64x8x8, aux Linear(4096 -> 10));
- ``cifar``: ``resnet18-cifar-cut``, the CIFAR stem cut after ``layer1[0].bn1``
  (64x32x32, aux Linear(65536 -> 10)), the cut that matches the paper's FLOPs
  ([INFERRED], docs/strategies/heron-sfl.md (Settings and reference numbers)).

Every (cut, method, batch, repeat) runs in a fresh subprocess with one torch
thread; the client trainer measures its second local step (after a warm-up
step) with :func:`fedapp.task.metering.step_cost`, the same call for all three:

- ``heron``: ``split-zo`` on front + aux (forward difference, sphere, P = 1, Adam);
- ``cse-fsl``: ``split-fo`` on front + aux (backprop, Adam);
- ``fedavg``: the whole ResNet-18 trained first-order (backprop, Adam), measured
  through the same trainer with the full model as the "front" and no aux head.

Memory on CUDA (``--device cuda``): ``whole`` = ``max_memory_allocated`` over the
step, which holds everything live on the device (parameters, Adam state, the
batch, the step's tensors), ``reserved`` = ``max_memory_reserved``, and ``step``
= whole minus what was allocated when the step began. On CPU: parameters,
buffers, gradients, optimizer state and the batch live before the step plus
the PyTorch profiler's peak of the step's own allocations net of frees
(``whole``; ``step`` is the profiler's part), and the process's peak RSS. FLOPs:
torch's ``FlopCounterMode`` (matmuls and convolutions, forward and backward)
and the paper's bookkeeping, F = one forward of front + aux, train = 3F,
forward-difference ZO = (P + 1)F = 2F. Bytes per round are the serialised
records of one client's ``train.split`` message and reply, for 10,000 local
examples (CIFAR-10 over 5 clients), h = one epoch, k = 5.

``curves``: accuracy per round on ``mnist-offline`` (5 IID clients, FedGen's
MNIST CNN cut after its convolutions), all three methods with the same data,
rounds, batch and learning rates, in-process through the real ServerApp,
strategy and ClientApp handlers (:class:`fedapp.harness.InProcessGrid`).

Usage::

    python -m bench.heron costs --repeats 3
    python -m bench.heron costs --device cuda --jobs 4 --out $OUT/heron_costs_cuda.json
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
from concurrent.futures import ThreadPoolExecutor
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
CUTS = {"imagenet": "resnet18-imagenet", "cifar": "resnet18-cifar-cut"}
BATCHES = (256, 64)
LABELS = {"heron": "HERON-SFL (split-zo)", "cse-fsl": "CSE-FSL (split-fo)", "fedavg": "FedAvg-FO"}
COLORS = {"heron": "tab:blue", "cse-fsl": "tab:orange", "fedavg": "tab:green"}
PAPER = {"heron": (259.44, 39.90), "cse-fsl": (726.46, 59.85)}  # MB, GFLOPs per update
SUMMARY_KEYS = ("peak-mem-mb", "step-mem-mb", "reserved-mb", "flops", "flops-3f2f",
                "forward-flops", "process-peak-rss-mb", "s-per-step", "forward-per-step",
                "backward-per-step", "client-params")


# -- costs: one local step in a fresh process ------------------------------------------------------


def one_step(method: str, batch: int, cut: str = "imagenet", device_name: str = "cpu") -> dict[str, Any]:
    """Run two local steps of ``method`` at ``batch``; return the second step's cost."""
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from clients.split import SplitFirstOrderTrainer, SplitPlan, SplitZerothOrderTrainer
    from fedapp.task.data import Arrays
    from fedapp.task.models import ImageSpec, build_model
    from fedapp.task.split import split_model

    torch.set_num_threads(1)
    device = torch.device(device_name)
    spec, name = ImageSpec(3, 32, 32, 10), CUTS[cut]
    rng = np.random.default_rng(0)
    data = Arrays(
        rng.integers(0, 256, (2 * batch, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, 2 * batch).astype(np.int64),
    )
    plan = SplitPlan(server_round=1, local_steps=2, upload_every=5, batch_size=batch, lr=1e-4,
                     optimizer="adam", data_seed=1, direction_seed=2)
    model = build_model(name, spec, seed=0)
    if method == "fedavg":
        front, aux, trainer = model, nn.Identity(), SplitFirstOrderTrainer()
    else:
        parts = split_model(model, name, spec)
        front, aux = parts.front, parts.aux
        trainer = SplitZerothOrderTrainer() if method == "heron" else SplitFirstOrderTrainer()
        del parts
    del model
    out = trainer.fit_split(front, aux, data, plan, device)
    local = nn.Sequential(front, aux)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        local(torch.zeros(batch, 3, 32, 32, device=device))
    forward = int(counter.get_total_flops())
    passes = plan.directions + 1 if plan.estimator == "forward" else 2 * plan.directions
    row = {
        "method": method, "cut": cut, "model": name, "batch": batch, "device": device_name,
        "flops": out.step.flops, "forward-flops": forward,
        "flops-3f2f": forward * (passes if method == "heron" else 3),
        "peak-mem-mb": out.step.peak_mem_mb, "step-mem-mb": out.step.step_mem_mb,
        "reserved-mb": out.step.reserved_mb, "scope": out.step.scope,
        "process-peak-rss-mb": out.stats.peak_mem_mb if device.type == "cpu" else math.nan,
        "forward-per-step": out.stats.forward_passes / out.steps,
        "backward-per-step": out.stats.backward_passes / out.steps,
        "s-per-step": out.stats.seconds / out.steps,
        "client-params": sum(p.numel() for p in local.parameters()),
    }
    if device.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(device)
    return row


def round_bytes(cut: str = "imagenet") -> dict[str, Any]:
    """Serialised bytes of one client's round at the paper's setting (analytic h, k, B)."""
    from flwr.app import ConfigRecord, RecordDict

    from fedapp.task.models import ImageSpec, build_model
    from fedapp.task.split import build_split
    from fedapp.wire import split as wire
    from fedapp.wire.common import (
        ARRAYS, CONFIG, ClientInfo, TrainMetrics, content_bytes, pack_arrays,
    )

    spec, batch, examples, k, name = ImageSpec(3, 32, 32, 10), 256, 10_000, 5, CUTS[cut]
    steps = math.ceil(examples / batch)
    uploads = math.ceil(steps / k)
    parts = build_split(name, spec)
    front, aux = parts.front.state_dict(), parts.aux.state_dict()
    down = wire.encode_down(wire.SplitDown(1, 0, k, 1e-3, 1e-4, front, aux))
    n = uploads * batch
    up = wire.encode_up(
        front, aux, torch.zeros(n, *parts.cut_shape), torch.zeros(n, dtype=torch.int64),
        [batch] * uploads, wire.SplitMetrics(TrainMetrics(0, 0, 0, 0, 0, 0), 0, 0, 0, 0),
        ClientInfo(0, "split-zo", name, [0] * 10),
    )
    full = pack_arrays(build_model(name, spec).state_dict())
    fedavg = content_bytes(RecordDict({ARRAYS: full, CONFIG: ConfigRecord()}))
    split = {"down": content_bytes(down), "up": content_bytes(up)}
    return {"heron": split, "cse-fsl": split, "fedavg": {"down": fedavg, "up": fedavg},
            "setting": {"examples": examples, "batch": batch, "steps": steps, "uploads": uploads}}


def _case(method: str, batch: int, cut: str, device: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.heron", "step", method, str(batch), "--cut", cut,
         "--device", device],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )
    if proc.returncode:
        raise RuntimeError(f"{cut} {method} B={batch}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def costs(repeats: int, device: str = "cpu", cuts: tuple[str, ...] = tuple(CUTS),
          methods: tuple[str, ...] = METHODS, jobs: int = 1, out: Path = COSTS_JSON,
          batches: tuple[int, ...] = BATCHES) -> dict[str, Any]:
    """Every case in a fresh process (``jobs`` at once: memory and FLOPs are per process)."""
    cases = [(m, b, c, r) for r in range(repeats) for c in cuts for b in batches for m in methods]
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"rows": rows, "machine": machine(device), "jobs": jobs}
    with ThreadPoolExecutor(jobs) as pool:
        for (method, batch, cut, repeat), row in zip(
            cases, pool.map(lambda c: _case(c[0], c[1], c[2], device), cases), strict=True
        ):
            rows.append({**row, "repeat": repeat})
            print(f"  {cut:8s} {method:8s} B={batch:3d} whole {row['peak-mem-mb']:8.2f} MiB  "
                  f"step {row['step-mem-mb']:8.2f} MiB  {row['flops'] / 1e9:7.3f} GFLOPs "
                  f"(3F/2F {row['flops-3f2f'] / 1e9:7.3f})", flush=True)
            write(out, result)
    result["median"] = {
        f"{cut}/{method}@{batch}": {
            key: statistics.median(float(r[key]) for r in rows
                                   if (r["cut"], r["method"], r["batch"]) == (cut, method, batch))
            for key in SUMMARY_KEYS
        }
        for cut in cuts for batch in batches for method in methods
    }
    try:
        result["bytes"] = {cut: round_bytes(cut) for cut in cuts}
    except ImportError as err:  # no Flower on this machine: bytes come from a CPU run
        result["bytes-error"] = str(err)
    write(out, result)
    return result


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


def machine(device: str = "cpu") -> dict[str, Any]:
    info = {"cpus": os.cpu_count(), "torch-threads": 1, "torch": torch.__version__,
            "load-avg-1m": os.getloadavg()[0], "device": device, "date": time.strftime("%Y-%m-%d")}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def first_round_reaching(rows: list[dict[str, Any]], level: float) -> int | None:
    return next((r["round"] for r in rows if r["accuracy"] >= level), None)


def cost_table(c: dict[str, Any]) -> list[str]:
    """Markdown rows for one costs JSON: both cuts, both batches, ratios to CSE-FSL."""
    med, dev = c["median"], c["machine"].get("gpu", c["machine"]["device"])
    lines = [f"Device: {dev} ({c['machine'].get('date', '?')}); memory = "
             + ("CUDA allocator" if "gpu" in c["machine"] else "resident + CPU profiler peak"),
             "", "| cut | method | batch | whole-update MiB | step-only MiB | reserved MiB "
             "| GFLOPs (counter) | GFLOPs (3F/2F) | fwd / bwd |", "|---|---|---|---|---|---|---|---|---|"]
    keys = [k for k in med if k.split("/")[1].split("@")[0] in METHODS]
    for key in keys:
        cut, rest = key.split("/")
        method, batch = rest.split("@")
        r = med[key]
        lines.append(
            f"| {cut} | {LABELS[method]} | {batch} | {r['peak-mem-mb']:.1f} | {r['step-mem-mb']:.1f} | "
            f"{r['reserved-mb']:.1f} | {r['flops'] / 1e9:.2f} | {r['flops-3f2f'] / 1e9:.2f} | "
            f"{r['forward-per-step']:.0f} / {r['backward-per-step']:.0f} |")
    lines += ["", "| cut | batch | memory ratio whole (paper 0.357) | step-only | FLOPs ratio "
              "counter | 3F/2F (paper 0.667) |", "|---|---|---|---|---|---|"]
    for cut in dict.fromkeys(k.split("/")[0] for k in keys):
        for batch in dict.fromkeys(int(k.split("@")[1]) for k in keys):
            h, f = med.get(f"{cut}/heron@{batch}"), med.get(f"{cut}/cse-fsl@{batch}")
            if h and f:
                lines.append(
                    f"| {cut} | {batch} | {h['peak-mem-mb'] / f['peak-mem-mb']:.3f} | "
                    f"{h['step-mem-mb'] / f['step-mem-mb']:.3f} | {h['flops'] / f['flops']:.3f} | "
                    f"{h['flops-3f2f'] / f['flops-3f2f']:.3f} |")
    return lines


def report(costs_json: Path = COSTS_JSON) -> None:
    lines = []
    if costs_json.is_file():
        c = json.loads(costs_json.read_text())
        lines += cost_table(c)
        for cut, b in c.get("bytes", {}).items():
            lines.append(f"\nbytes per round ({cut} cut, MiB down / up): " + ", ".join(
                f"{LABELS[m]} {b[m]['down'] / 2**20:.2f} / {b[m]['up'] / 2**20:.2f}" for m in METHODS))
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
    plot(costs_json)


def plot(costs_json: Path = COSTS_JSON) -> None:
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
    if costs_json.is_file():
        med = json.loads(costs_json.read_text())["median"]
        groups = [(c, b) for c in CUTS for b in BATCHES if f"{c}/heron@{b}" in med]
        x = np.arange(len(groups))
        for i, m in enumerate(m for m in METHODS if f"{groups[0][0]}/{m}@{groups[0][1]}" in med):
            keys = [f"{c}/{m}@{b}" for c, b in groups]
            mem = [med[k]["peak-mem-mb"] if k in med else np.nan for k in keys]
            fl = [med[k]["flops"] / 1e9 if k in med else np.nan for k in keys]
            axes[1].bar(x + 0.27 * (i - 1), mem, 0.27, color=COLORS[m], label=LABELS[m])
            axes[2].bar(x + 0.27 * (i - 1), fl, 0.27, color=COLORS[m], label=LABELS[m])
        for ax, what in ((axes[1], "client peak memory / step (MiB)"),
                         (axes[2], "client GFLOPs / step")):
            ax.set(xticks=x, xticklabels=[f"{c} B={b}" for c, b in groups], ylabel=what,
                   title="ResNet-18, two cuts, 32x32")
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
    step.add_argument("--cut", choices=tuple(CUTS), default="imagenet")
    step.add_argument("--device", default="cpu")
    cost = sub.add_parser("costs")
    cost.add_argument("--repeats", type=int, default=3)
    cost.add_argument("--device", default="cpu")
    cost.add_argument("--cuts", nargs="+", choices=tuple(CUTS), default=list(CUTS))
    cost.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    cost.add_argument("--jobs", type=int, default=1, help="cases at once (memory, FLOPs only)")
    cost.add_argument("--out", type=Path, default=COSTS_JSON)
    cost.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    sub.add_parser("curves").add_argument("--rounds", type=int, default=60)
    sub.add_parser("report").add_argument("--costs", type=Path, default=COSTS_JSON)
    args = parser.parse_args()
    if args.cmd == "step":
        print(json.dumps(one_step(args.method, args.batch, args.cut, args.device)))
    elif args.cmd == "costs":
        costs(args.repeats, args.device, tuple(args.cuts), tuple(args.methods), args.jobs, args.out,
              tuple(args.batches))
        print("\n".join(cost_table(json.loads(args.out.read_text()))))
    elif args.cmd == "curves":
        curves(args.rounds)
        report()
    else:
        report(args.costs)


if __name__ == "__main__":
    main()
