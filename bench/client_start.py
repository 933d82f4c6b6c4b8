"""What a client pays for its data: a fresh process's first call, and each new client after.

Three measurements, each in a fresh Python process with an empty data cache
directory shared by the three:

- **cold disk**: the first process ever: ``import fedapp.client_app`` (what a Ray
  actor or a deployment ClientApp process imports) and its first
  :func:`fedapp.task.data.load_client_data` call, which finds no cache;
- **warm disk**: a second fresh process, another partition id: the case of every
  new Ray actor and every deployment message once one process has run;
- **per new client**: in one warm process, for each partitioner, the first
  client's call (which partitions the pool, ``first-client-ms``) and then the call
  for each of ``--new-clients`` partition ids not loaded before (median, ms).

``--code-root`` runs the children against another checkout (e.g. ``/work/main``)
so old and new code are measured side by side in one run.

Usage::

    python -m bench.client_start --out bench/results/client_start.json
    python -m bench.client_start --code-root /work/main --out /tmp/before.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
import fedapp.client_app  # noqa: F401  what an actor imports
t_import = time.perf_counter() - t0
from fedapp.config import DataConfig
from fedapp.task.data import load_client_data
spec = json.loads(sys.argv[1])
out = {"import-s": t_import}
for mode, partition in spec["calls"]:
    cfg = DataConfig.model_validate({**spec["data"], "partition": partition})
    if mode == "first":
        t0 = time.perf_counter()
        load_client_data(cfg, 0, spec["first-id"], spec["clients"])
        out[f"first-call-s-{partition}"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        load_client_data(cfg, 0, 0, spec["clients"])  # this partitioner's one-off work
        out[f"first-client-ms-{partition}"] = 1000 * (time.perf_counter() - t0)
        times = []
        for pid in range(1, 1 + spec["new-clients"]):
            t0 = time.perf_counter()
            load_client_data(cfg, 0, pid, spec["clients"])
            times.append(time.perf_counter() - t0)
        out[f"new-client-ms-{partition}"] = 1000 * statistics.median(times)
print("RESULT " + json.dumps(out))
"""


def _data_table() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"]["data"])


def _child(code_root: Path, spec: dict[str, Any]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code_root), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=code_root,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def measure(code_root: Path, clients: int, new_clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fz-start-") as cache:
        data = {**_data_table(), "dataset": "mnist-offline", "cache-dir": cache,
                "min-partition-size": 0}  # Dirichlet: 1000 partitions of 4000 images
        base = {"data": data, "clients": clients, "new-clients": new_clients}
        cold = _child(code_root, {**base, "first-id": 0, "calls": [["first", "iid"]]})
        warm = _child(code_root, {**base, "first-id": clients - 1, "calls": [["first", "iid"]]})
        parts = ["iid", "dirichlet", "pathological"]
        per = _child(code_root, {**base, "calls": [["new", p] for p in parts]})
    return {
        "code-root": str(code_root), "clients": clients, "new-clients": new_clients,
        "cold-disk": {"import-s": cold["import-s"], "first-call-s": cold["first-call-s-iid"]},
        "warm-disk": {"import-s": warm["import-s"], "first-call-s": warm["first-call-s-iid"]},
        "first-client-ms": {p: per[f"first-client-ms-{p}"] for p in parts},
        "new-client-ms": {p: per[f"new-client-ms-{p}"] for p in parts},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code-root", type=Path, action="append",
                    help="checkout(s) to measure, side by side (default: this one)")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--new-clients", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/client_start.json")
    args = ap.parse_args()
    roots = args.code_root or [ROOT]
    rows = [measure(root.resolve(), args.clients, args.new_clients) for root in roots]
    print(f"mnist-offline, {args.clients} partitions, fresh processes (machine load: "
          f"{os.getloadavg()[0]:.1f})")
    print(f"{'code':<28}{'import s':>9}{'1st call cold s':>16}{'1st call warm s':>16}"
          f"{'1st dir ms':>11}{'new iid ms':>11}{'new dir ms':>11}{'new path ms':>12}")
    for r in rows:
        n = r["new-client-ms"]
        print(f"{r['code-root'][-28:]:<28}{r['warm-disk']['import-s']:>9.2f}"
              f"{r['cold-disk']['first-call-s']:>16.3f}{r['warm-disk']['first-call-s']:>16.3f}"
              f"{r['first-client-ms']['dirichlet']:>11.1f}"
              f"{n['iid']:>11.2f}{n['dirichlet']:>11.2f}{n['pathological']:>12.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load-1min": os.getloadavg()[0], "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
