"""Client memory and time per local step: first-order vs zeroth-order vs inference only.

Each measurement runs in a fresh Python process (``--child``), so peaks never
leak between them. The child builds the model on 3x32x32 synthetic inputs with
10 classes, takes one warm-up step, then ``steps`` measured steps through the
real trainers (``clients.fo`` SGD with momentum; ``clients.zo`` central estimator,
P = 1, Gaussian) or plain forwards under ``torch.inference_mode`` (``infer``).

Memory is CPU resident memory read from ``/proc/self/status``:

- ``base``: RSS before the warm-up step (Python, torch, the model, one batch);
- ``peak``: peak RSS (``VmHWM``) over the measured steps, after resetting it;
- ``step`` = peak - base: what the local update itself adds (activations,
  gradients, optimiser state, perturbation buffers). Ratios use this column.

Usage::

    python -m bench.zo_memory --out bench/results/zo_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = [("fedgen-cnn", 64, 20), ("fedgen-cnn", 256, 10), ("resnet18", 64, 3), ("resnet18", 256, 2)]
MODES = ("fo", "zo", "infer")


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(field)


def child(model_name: str, batch: int, mode: str, steps: int) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    import torch

    from clients.base import FitPlan
    from clients.fo import FirstOrderTrainer
    from clients.zo import ZerothOrderTrainer, ZOPlan
    from fedapp.task.data import Arrays
    from fedapp.task.models import ImageSpec, build_model

    torch.set_num_threads(1)
    device = torch.device("cpu")
    model = build_model(model_name, ImageSpec(3, 32, 32, 10), seed=0)
    rng = np.random.default_rng(0)
    data = Arrays(rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8),
                  rng.integers(0, 10, batch).astype(np.int64))
    x = torch.from_numpy(data.x).float().div_(255.0)

    def plan(n: int) -> FitPlan:
        return FitPlan(server_round=1, lr=0.01, local_epochs=1, local_steps=n, batch_size=batch,
                       optimizer="sgd", momentum=0.9, weight_decay=0.0, proximal_mu=0.0,
                       data_seed=0)

    def zo_plan(n: int) -> ZOPlan:
        base = plan(n)
        return ZOPlan(**{k: getattr(base, k) for k in FitPlan.__slots__}, num_directions=1,
                      mu=1e-3, estimator="central", direction="gaussian", exact_restore=False,
                      seed_base=1, seed_salt=None)

    def run(n: int) -> tuple[float, int, int]:
        if mode == "infer":
            model.eval()
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(n):
                    model(x)
            return time.perf_counter() - t0, n, 0
        stats = (FirstOrderTrainer().fit(model, data, plan(n), device) if mode == "fo"
                 else ZerothOrderTrainer().fit(model, data, zo_plan(n), device))
        return stats.seconds, stats.forward_passes, stats.backward_passes

    base = _rss_mb("VmRSS")
    run(1)  # warm-up: lazy allocations, thread pools
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    seconds, forwards, backwards = run(steps)
    peak = _rss_mb("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    return {"model": model_name, "batch": batch, "mode": mode, "steps": steps, "params": params,
            "base_mb": base, "peak_mb": peak, "step_mb": peak - base,
            "s_per_step": seconds / steps, "forwards_per_step": forwards / steps,
            "backwards_per_step": backwards / steps}


def measure(model_name: str, batch: int, mode: str, steps: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.zo_memory", "--child", model_name, str(batch), mode, str(steps)],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "BATCH", "MODE", "STEPS"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zo_memory.json")
    args = parser.parse_args()
    if args.child:
        m, b, mode, s = args.child
        print(json.dumps(child(m, int(b), mode, int(s))))
        return
    rows = []
    for model_name, batch, steps in CASES:
        for _ in range(args.repeats):
            for mode in MODES:  # interleaved, side by side
                rows.append(measure(model_name, batch, mode, steps))
                print(json.dumps(rows[-1]), flush=True)
    table = summarise(rows)
    print_table(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": table, "load": os.getloadavg(),
                                    "cpus": os.cpu_count()}, indent=1))


def summarise(rows: list[dict[str, float]]) -> list[dict[str, float | str]]:
    out: list[dict[str, float | str]] = []
    for model_name, batch, _ in CASES:
        med = {mode: {k: statistics.median(float(r[k]) for r in rows if r["model"] == model_name
                                           and r["batch"] == batch and r["mode"] == mode)
                      for k in ("peak_mb", "step_mb", "s_per_step", "forwards_per_step",
                                "backwards_per_step")}
               for mode in MODES}
        out.append({
            "model": model_name, "batch": batch,
            **{f"{mode}_{k}": round(v, 4) for mode in MODES for k, v in med[mode].items()},
            "zo_over_fo_step_mem": round(med["zo"]["step_mb"] / med["fo"]["step_mb"], 3),
            "zo_over_infer_step_mem": round(med["zo"]["step_mb"] / med["infer"]["step_mb"], 3),
            "zo_over_fo_time": round(med["zo"]["s_per_step"] / med["fo"]["s_per_step"], 3),
        })
    return out


def print_table(table: list[dict[str, float | str]]) -> None:
    print("| model | batch | FO step MiB | ZO step MiB | infer MiB | ZO/FO mem | ZO/infer mem "
          "| FO s/step | ZO s/step | ZO/FO time | FO peak RSS | ZO peak RSS | infer peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['batch']} | {r['fo_step_mb']:.0f} | {r['zo_step_mb']:.0f} | "
              f"{r['infer_step_mb']:.0f} | {r['zo_over_fo_step_mem']:.2f} | "
              f"{r['zo_over_infer_step_mem']:.2f} | {r['fo_s_per_step']:.3f} | "
              f"{r['zo_s_per_step']:.3f} | {r['zo_over_fo_time']:.2f} | {r['fo_peak_mb']:.0f} | "
              f"{r['zo_peak_mb']:.0f} | {r['infer_peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
