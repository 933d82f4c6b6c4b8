"""Client memory per local step: first-order vs zeroth-order vs inference only (issue 17).

Each (model, batch, mode) runs in a fresh Python process (``--child``), so peaks
never leak between cases. The child builds the model on 3x32x32 synthetic
inputs with 10 classes on ``--device``, takes one warm-up step, then measures
``steps`` steps through the real trainers:

- ``infer``: forwards under ``torch.inference_mode`` (eval mode);
- ``fo``: ``clients.fo`` (SGD, momentum 0.9: one parameter-sized buffer);
- ``zo``: ``clients.zo`` with the ``zo.*`` defaults (central, P = 1, Gaussian,
  no momentum);
- ``zo-momentum``: the same with ``zo.momentum = 0.9`` (one parameter-sized
  velocity buffer; the setting of the issue's first measurement);
- ``zo-legacy``: ``zo`` with the pre-issue-17 CPU-generator step patched in
  (:mod:`bench.zo_speed`), for the before/after comparison.

CUDA (the allocator, everything live on the device): ``whole`` =
``max_memory_allocated`` over the measured steps (parameters, optimiser state,
the batch and the step's tensors), ``reserved`` = ``max_memory_reserved``,
``step`` = whole − allocated when the steps began. CPU: ``base`` = RSS before
the warm-up step, ``peak`` = peak RSS (``VmHWM``, reset after the warm-up),
``step`` = peak − base, and ``live`` = the profiler's peak of live tensor bytes
during one more step (allocator level, blind to the C library's heap
retention; ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment fixes glibc's
mmap threshold so that freed activations go back to the system and RSS tracks
live memory). Ratios to ``infer`` use ``whole`` on CUDA and ``step`` on CPU.

Usage::

    python -m bench.zo_memory --device cpu --out bench/results/zo_memory.json
    python -m bench.zo_memory --device cuda --jobs 4 --out $OUT/zo_memory_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = [("resnet18", 64, 3), ("resnet18", 256, 2), ("fedgen-cnn", 8, 3)]
MODES = ("infer", "fo", "zo", "zo-momentum", "zo-legacy")


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(field)


def child(model_name: str, batch: int, mode: str, steps: int, device_name: str) -> dict[str, object]:
    """One measurement in this (fresh) process."""
    import torch

    from clients.base import FitPlan
    from clients.fo import FirstOrderTrainer
    from clients.zo import ZerothOrderTrainer, ZOPlan
    from fedapp.task import zo
    from fedapp.task.data import Arrays
    from fedapp.task.metering import _profiled_peak_bytes
    from fedapp.task.models import ImageSpec, build_model

    if mode == "zo-legacy":
        from bench.zo_speed import legacy_apply_step_, legacy_estimate_

        zo.estimate_ = legacy_estimate_  # type: ignore[assignment]
        zo.apply_step_ = legacy_apply_step_  # type: ignore[assignment]
    torch.set_num_threads(1)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    model = build_model(model_name, ImageSpec(3, 32, 32, 10), seed=0).to(device)
    rng = np.random.default_rng(0)
    data = Arrays(rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8),
                  rng.integers(0, 10, batch).astype(np.int64))
    x = torch.from_numpy(data.x).float().div_(255.0).to(device)

    def plan(n: int) -> FitPlan:
        return FitPlan(server_round=1, lr=0.01, local_epochs=1, local_steps=n, batch_size=batch,
                       optimizer="sgd", momentum=0.9, weight_decay=0.0, proximal_mu=0.0,
                       data_seed=0)

    def zo_plan(n: int) -> ZOPlan:
        base = {k: getattr(plan(n), k) for k in FitPlan.__slots__}
        base["momentum"] = 0.9 if mode == "zo-momentum" else 0.0
        return ZOPlan(**base, num_directions=1, mu=1e-3, estimator="central",
                      direction="gaussian", exact_restore=False, seed_base=1, seed_salt=None)

    def run(n: int) -> tuple[float, int, int]:
        if mode == "infer":
            model.eval()
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(n):
                    model(x)
            if cuda:
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0, n, 0
        stats = (FirstOrderTrainer().fit(model, data, plan(n), device) if mode == "fo"
                 else ZerothOrderTrainer().fit(model, data, zo_plan(n), device))
        return stats.seconds, stats.forward_passes, stats.backward_passes

    out: dict[str, object] = {"model": model_name, "batch": batch, "mode": mode, "steps": steps,
                              "device": device_name,
                              "params": sum(p.numel() for p in model.parameters())}
    base = _rss_mb("VmRSS")
    run(1)  # warm-up: lazy allocations, thread pools, kernel compilation
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        seconds, forwards, backwards = run(steps)
        whole = torch.cuda.max_memory_allocated(device) / 2**20
        out |= {"whole_mb": whole, "step_mb": whole - start / 2**20, "start_mb": start / 2**20,
                "reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
                "gpu": torch.cuda.get_device_name(device)}
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        seconds, forwards, backwards = run(steps)
        peak = _rss_mb("VmHWM")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            run(1)
        out |= {"base_mb": base, "peak_mb": peak, "step_mb": peak - base,
                "live_mb": _profiled_peak_bytes(prof) / 2**20}
    return out | {"s_per_step": seconds / steps, "forwards_per_step": forwards / steps,
                  "backwards_per_step": backwards / steps}


def measure(model_name: str, batch: int, mode: str, steps: int, device: str) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(
        [sys.executable, "-m", "bench.zo_memory", "--child", model_name, str(batch), mode,
         str(steps), device],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )
    if out.returncode:
        raise RuntimeError(f"{model_name} B={batch} {mode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=5, metavar=("MODEL", "BATCH", "MODE", "STEPS", "DEVICE"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="cases run at once (memory only)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batches", type=int, nargs="+", default=[b for _, b, _ in CASES])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zo_memory.json")
    args = parser.parse_args()
    if args.child:
        m, b, mode, s, dev = args.child
        print(json.dumps(child(m, int(b), mode, int(s), dev)))
        return
    cases = [(m, b, s, mode) for _ in range(args.repeats) for m, b, s in CASES
             if b in args.batches for mode in args.modes]  # interleaved, side by side
    rows: list[dict[str, object]] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda c: measure(c[0], c[1], c[3], c[2], args.device), cases):
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args, rows)
    print_table(summarise(rows, args.device))


def write(args: argparse.Namespace, rows: list[dict[str, object]]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": rows, "summary": summarise(rows, args.device), "device": args.device,
        "load": os.getloadavg(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
        "jobs": args.jobs, "malloc-mmap-threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }, indent=1))


def summarise(rows: list[dict[str, object]], device: str) -> list[dict[str, object]]:
    key = "whole_mb" if device != "cpu" else "step_mb"
    fields = ("whole_mb", "step_mb", "reserved_mb", "peak_mb", "live_mb", "s_per_step")
    out: list[dict[str, object]] = []
    for model_name, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        sel = [r for r in rows if r["model"] == model_name and r["batch"] == batch]
        med = {mode: {f: statistics.median(float(r[f]) for r in sel if r["mode"] == mode)
                      for f in fields if any(f in r for r in sel if r["mode"] == mode)}
               for mode in dict.fromkeys(r["mode"] for r in sel)}
        row: dict[str, object] = {"model": model_name, "batch": batch, "ratio_of": key}
        for mode, values in med.items():
            row |= {f"{mode}_{f}": round(v, 3) for f, v in values.items()}
            if "infer" in med and key in values:
                row[f"{mode}_over_infer"] = round(values[key] / med["infer"][key], 3)
        out.append(row)
    return out


def print_table(table: list[dict[str, object]]) -> None:
    for row in table:
        key = row["ratio_of"]
        modes = [m for m in MODES if f"{m}_{key}" in row]
        print(f"\n{row['model']} B={row['batch']} ({key}, MiB; ratio to infer)")
        print("| mode | " + " | ".join(modes) + " |")
        print("|---" * (len(modes) + 1) + "|")
        print(f"| {key} | " + " | ".join(f"{row[f'{m}_{key}']:.1f}" for m in modes) + " |")
        print("| / infer | " + " | ".join(f"{row.get(f'{m}_over_infer', float('nan')):.3f}"
                                        for m in modes) + " |")
        for extra in ("step_mb", "reserved_mb", "live_mb", "s_per_step"):
            if extra != key and f"zo_{extra}" in row:
                print(f"| {extra} | " + " | ".join(f"{row.get(f'{m}_{extra}', float('nan')):.3f}"
                                                  for m in modes) + " |")


if __name__ == "__main__":
    main()
