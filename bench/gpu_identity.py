"""CPU-vs-device bit identity of the ZO directions, without pytest (issue 17, GPU machine).

The same checks as ``tests/test_directions.py::test_cpu_and_cuda_give_the_same_bits``
plus a cross-device replay of a real trainer's history: a node trains
ResNet-18 with ``clients.zo`` on ``--device`` and uploads its ``(seed, scalar)``
steps; a CPU replica and a device replica replay them from the same start and
must hold the same bits. Each check is run with the eager kernel and with the
default backend (fused on CUDA when it checks out). Writes JSON, prints a table;
exit status 1 if any check fails.

Usage::

    python -m bench.gpu_identity --device cuda --out $OUT/gpu_identity.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedapp.task import directions, zo
from fedapp.task.models import ImageSpec, build_model


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b, strict=True))


def checks(device: torch.device) -> dict[str, Callable[[], bool]]:
    def normals() -> bool:
        n = 3 * directions.CHUNK["cuda"] + 17
        return torch.equal(directions.normals(4, 5, n), directions.normals(4, 5, n, device).cpu())

    def perturb_model() -> bool:
        cpu = zo.trainable(build_model("resnet18", ImageSpec(3, 32, 32, 10), seed=0))
        dev = [p.detach().clone().to(device) for p in cpu]
        for seed, coeffs in ((1, 0.3), (2, [1e-3, -2e-3, 1e-3, -0.1])):
            directions.add_direction_(cpu, seed, coeffs)
            directions.add_direction_(dev, seed, coeffs)
        return _same(cpu, dev)

    def sphere_norm() -> bool:
        directions._NORMS.clear()
        on_dev = directions.square_norm(77, 11_173_962, device)
        directions._NORMS.clear()
        return on_dev == directions.square_norm(77, 11_173_962, "cpu")

    def fedzge_queries() -> bool:
        from fedapp.task.fedzge import seeded_queries

        x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return (torch.equal(zo.unit_directions((64, 3, 32, 32), 5, 8),
                            zo.unit_directions((64, 3, 32, 32), 5, 8, device).cpu())
                and torch.equal(seeded_queries(x, 5, 8, 1e-3),
                                seeded_queries(x.to(device), 5, 8, 1e-3).cpu()))

    def trainer_replay() -> bool:
        from clients.base import FitPlan
        from clients.zo import ZerothOrderTrainer, ZOPlan
        from fedapp.task.data import Arrays

        spec = ImageSpec(3, 32, 32, 10)
        rng = np.random.default_rng(0)
        data = Arrays(rng.integers(0, 256, (256, 3, 32, 32), dtype=np.uint8),
                      rng.integers(0, 10, 256).astype(np.int64))
        ok = True
        for direction in ("gaussian", "sphere"):
            plan = ZOPlan(server_round=1, lr=1e-3, local_epochs=1, local_steps=4, batch_size=64,
                          optimizer="sgd", momentum=0.0, weight_decay=1e-3, proximal_mu=0.0,
                          data_seed=0, num_directions=2, mu=1e-3, estimator="central",
                          direction=direction, exact_restore=False, seed_base=9, seed_salt=None)
            trainer = ZerothOrderTrainer()
            trainer.fit(build_model("resnet18", spec, seed=1), data, plan, device)
            cpu = build_model("resnet18", spec, seed=1)
            dev = build_model("resnet18", spec, seed=1).to(device)
            zo.replay_(zo.trainable(cpu), trainer.steps, direction)
            zo.replay_(zo.trainable(dev), trainer.steps, direction)
            ok = ok and _same(zo.trainable(cpu), zo.trainable(dev))
        return ok

    return {"normals": normals, "perturb-resnet18": perturb_model, "sphere-norm": sphere_norm,
            "fedzge-queries": fedzge_queries, "trainer-replay": trainer_replay}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("gpu_identity.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict[str, object] = {"device": str(device), "torch": torch.__version__,
                                 "date": time.strftime("%Y-%m-%d"), "checks": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    failed = False
    for backend in ("eager", "auto"):
        os.environ["FEDZG_ZO_BACKEND"] = backend
        for name, check in checks(device).items():
            t0 = time.perf_counter()
            try:
                ok, err = check(), ""
            except Exception as exc:  # report and continue: one JSON with every outcome
                ok, err = False, f"{type(exc).__name__}: {exc}"
            failed |= not ok
            row = {"ok": ok, "seconds": round(time.perf_counter() - t0, 2), "error": err}
            result["checks"][f"{backend}/{name}"] = row  # type: ignore[index]
            print(f"| {backend} | {name} | {'same bits' if ok else 'DIFFERENT'} | "
                  f"{row['seconds']} s | {err[:200]} |", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
    result["fused-kernel"] = directions.fused_available(device)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"fused kernel on {device}: {result['fused-kernel']}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
