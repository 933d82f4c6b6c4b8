"""ZO step time, side by side: old CPU-generator directions vs the device generator (issue 17).

One process, one model (``resnet18``: CIFAR stem, 11.2 M parameters), 3x32x32
synthetic inputs, 10 classes. For each batch size the modes run interleaved,
``--repeats`` rounds of ``--steps`` timed steps after ``--warmup`` untimed ones;
the table gives the median milliseconds per step:

- ``infer``: one forward under ``torch.inference_mode`` (eval mode);
- ``fo``: forward, backward and an SGD-with-momentum step;
- ``zo-legacy``: the pre-issue-17 ZO step (central, P = 1, Gaussian): directions
  drawn tensor by tensor by a private CPU ``torch.Generator`` and copied to the
  device, four regenerations plus a per-tensor estimate buffer (kept here only
  as the baseline);
- ``zo`` (and on CUDA ``zo-eager``): the same step through :mod:`fedapp.task.zo`
  (three regenerations on the device) with the default backend (``auto``: the
  fused kernel on CUDA when it checks out, else the eager kernel) and, on CUDA,
  with the eager kernel forced;
- ``dir-legacy`` / ``dir``: the same two ZO steps with the forwards replaced by
  a constant-time loss, i.e. only the direction work of one step (robust to the
  load of a shared CPU, where the forwards' time drifts);
- ``gen-*``: one regeneration (θ += a·v over all parameters) alone.

Usage::

    python -m bench.zo_speed --device cpu --batches 64 --steps 5 --out bench/results/zo_speed_cpu.json
    python -m bench.zo_speed --device cuda --out $OUT/zo_speed_cuda.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedapp.task import zo
from fedapp.task.models import ImageSpec, build_model

ROOT = Path(__file__).resolve().parents[1]


# -- the baseline: the pre-issue-17 generator and step, verbatim in behaviour --------------------


def _legacy_draw(gen: torch.Generator, like: Tensor) -> Tensor:
    z = torch.randn(like.shape, generator=gen, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def legacy_perturb_(params: Sequence[Tensor], seed: int, scale: float) -> None:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for p in params:
        p.add_(_legacy_draw(gen, p), alpha=scale)


@torch.no_grad()
def legacy_step_(loss_at: Callable[[], float], params: Sequence[Tensor], seed: int, mu: float,
                 lr: float) -> float:
    """Central difference, P = 1, Gaussian; restore, then estimate tensor by tensor and update."""
    legacy_perturb_(params, seed, mu)
    plus = loss_at()
    legacy_perturb_(params, seed, -2 * mu)
    minus = loss_at()
    legacy_perturb_(params, seed, mu)
    g = (plus - minus) / (2 * mu)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for p in params:
        est = torch.zeros_like(p)
        est.add_(_legacy_draw(gen, p), alpha=g)
        p.sub_(est, alpha=lr)
    return 0.5 * (plus + minus)


def legacy_estimate_(loss_at: Callable[[], float], params: Sequence[Tensor], seeds: Sequence[int],
                     mu: float, estimator: str = "central", direction: str = "gaussian",
                     model: torch.nn.Module | None = None, restore: bool = True
                     ) -> tuple[list[float], float, None]:
    """The old ``projected_gradients`` (central, Gaussian) with :func:`zo.estimate_`'s signature."""
    grads, clean = [], math.nan
    for i, seed in enumerate(seeds):
        legacy_perturb_(params, seed, mu)
        plus = loss_at()
        legacy_perturb_(params, seed, -2 * mu)
        with zo.frozen_bn_stats(model) if model is not None else nullcontext():
            minus = loss_at()
        legacy_perturb_(params, seed, mu)
        grads.append((plus - minus) / (2 * mu))
        clean = 0.5 * (plus + minus) if i == 0 else clean
    return grads, clean, None


@torch.no_grad()
def legacy_apply_step_(params: Sequence[Tensor], step: zo.ZOStep, direction: str = "gaussian",
                       pending: object = None) -> None:
    """The old ``apply_step_`` (Gaussian, no weight decay): a per-tensor estimate buffer."""
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in step.seeds]
    for p in params:
        est = torch.zeros_like(p)
        for gen, g in zip(gens, step.grads, strict=True):
            est.add_(_legacy_draw(gen, p), alpha=g)
        p.sub_(est.mul_(1 / step.num_directions), alpha=step.lr)


# -- timing -------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def modes(model: torch.nn.Module, x: Tensor, y: Tensor, device: torch.device
          ) -> dict[str, Callable[[], object]]:
    params = zo.trainable(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    counter = iter(range(10**9))

    def loss_at() -> float:
        with torch.inference_mode():
            return float(F.cross_entropy(model(x).double(), y))

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)
        model.train()

    def fo() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def zo_step(backend: str) -> Callable[[], None]:
        def step() -> None:
            os.environ["FEDZG_ZO_BACKEND"] = backend
            seeds = [next(counter)]
            grads, _, pending = zo.estimate_(loss_at, params, seeds, 1e-3, "central", "gaussian",
                                             model, restore=False)
            record = zo.ZOStep(tuple(seeds), tuple(float(np.float32(g)) for g in grads), 1e-4, 1)
            zo.apply_step_(params, record, "gaussian", pending)
        return step

    alternating = iter(v for _ in range(10**9) for v in (1.0, 0.5))

    def no_forward() -> float:
        return next(alternating)

    def dir_step() -> None:
        os.environ["FEDZG_ZO_BACKEND"] = "auto"
        seeds = [next(counter)]
        grads, _, pending = zo.estimate_(no_forward, params, seeds, 1e-3, "central", "gaussian",
                                         model, restore=False)
        record = zo.ZOStep(tuple(seeds), tuple(float(np.float32(g)) for g in grads), 1e-7, 1)
        zo.apply_step_(params, record, "gaussian", pending)

    def gen(backend: str) -> Callable[[], None]:
        def step() -> None:
            os.environ["FEDZG_ZO_BACKEND"] = backend
            zo.perturb_(params, next(counter), 1e-6)
        return step

    fns: dict[str, Callable[[], object]] = {
        "infer": infer, "fo": fo,
        "zo-legacy": lambda: legacy_step_(loss_at, params, next(counter), 1e-3, 1e-4),
        "zo-eager": zo_step("eager"), "zo": zo_step("auto"),
        "dir-legacy": lambda: legacy_step_(no_forward, params, next(counter), 1e-3, 1e-7),
        "dir": dir_step,
        "gen-legacy": lambda: legacy_perturb_(params, next(counter), 1e-6),
        "gen-eager": gen("eager"), "gen": gen("auto"),
    }
    if device.type != "cuda":  # auto is the eager kernel off CUDA
        del fns["zo-eager"], fns["gen-eager"]
    return fns


def run(device: torch.device, model_name: str, batches: Sequence[int], steps: int, warmup: int,
        repeats: int, only: Sequence[str] = ()) -> dict[str, object]:
    spec = ImageSpec(3, 32, 32, 10)
    rows: dict[str, dict[str, list[float]]] = {}
    for batch in batches:
        model = build_model(model_name, spec, seed=0).to(device).train()
        gen = torch.Generator().manual_seed(batch)
        x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (batch,), generator=gen).to(device)
        fns = {k: f for k, f in modes(model, x, y, device).items() if not only or k in only}
        times: dict[str, list[float]] = {m: [] for m in fns}
        for name, fn in fns.items():
            timed(fn, device, warmup)
        for _ in range(repeats):
            for name, fn in fns.items():  # interleaved: load drifts hit every mode
                times[name] += timed(fn, device, steps)
        rows[str(batch)] = times
        del model, x, y, fns
    os.environ.pop("FEDZG_ZO_BACKEND", None)
    return {"rows": rows, "median_ms": {b: {m: statistics.median(t) for m, t in r.items()}
                                        for b, r in rows.items()},
            "machine": machine(device), "model": model_name, "steps": steps, "repeats": repeats}


def machine(device: torch.device) -> dict[str, object]:
    from fedapp.task import directions

    info: dict[str, object] = {
        "device": str(device), "torch": torch.__version__, "cpus": os.cpu_count(),
        "torch-threads": torch.get_num_threads(), "python": platform.python_version(),
        "load-avg-1m": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["fused-kernel"] = directions.fused_available(device)
    return info


def print_table(result: dict[str, object]) -> None:
    med = result["median_ms"]
    assert isinstance(med, dict)
    names = list(next(iter(med.values())).keys())
    ratios = [("zo", "infer"), ("zo", "fo"), ("zo-legacy", "zo"), ("dir-legacy", "dir"),
              ("gen-legacy", "gen")]
    ratios = [(a, b) for a, b in ratios if a in names and b in names]
    print("| batch | " + " | ".join(names) + "".join(f" | {a} / {b}" for a, b in ratios) + " |")
    print("|---" * (len(names) + len(ratios) + 1) + "|")
    for batch, m in med.items():
        cells = " | ".join(f"{m[n]:.2f}" for n in names)
        print(f"| {batch} | {cells}" + "".join(f" | {m[a] / m[b]:.2f}" for a, b in ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=[], help="a subset of the modes (default all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zo_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(torch.device(args.device), args.model, args.batches, args.steps, args.warmup,
                 args.repeats, args.modes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_table(result)


if __name__ == "__main__":
    main()
