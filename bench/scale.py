"""Simulation at scale: fedzg beside plain Flower at 10, 100, 1000 (and 3000) clients.

Both sides are real ``flwr run`` simulations on Ray (``client-resources-num-cpus=1``,
``init-args-num-cpus=2``: two actors), each with its own fresh local SuperLink:

- **fedzg**: ``strategy=fedavg``, ``fedgen-cnn``, ``mnist-offline`` IID, ``--rounds``
  rounds, ``server.fraction-train`` = ``server.fraction-evaluate`` = 0.1;
- **plain Flower**: ``bench/echo_app`` (Flower's ``FedAvg``; clients echo one
  float32 array as large as the fedgen-cnn model), same rounds and fractions.

Per run: the **cold round** (round 1: fresh Ray actors import the ClientApp and
load their data), the **steady round** (median of rounds 2..R), both as the
time between two server-side evaluations, and the **peak summed RSS** of every
process of the run (SuperLink, simulation, Ray and its actors: all carry the
run's ``FLWR_HOME``), sampled every 0.5 s. The data cache is warmed before the
runs (as after any earlier run; a first run ever also parses the pool, ~0.4 s).

Usage::

    python -m bench.scale                       # 10, 100, 1000 clients
    python -m bench.scale --with-3000           # and 3000
    python -m bench.scale --clients 10 --rounds 3 --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.flwr_cli import ROOT, FlwrCli, pids_with_env
from fedapp.results import atomic_write_json, read_rounds

ECHO = ROOT / "bench" / "echo_app"
FRACTION = 0.1


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssPeak:
    """Peak over time of the summed RSS of every process whose env holds ``FLWR_HOME=home``."""

    def __init__(self, home: Path, period: float = 0.5) -> None:
        self.home, self.period, self.peak = str(home), period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            total = sum(_rss_bytes(pid) for pid in pids_with_env("FLWR_HOME", self.home))
            self.peak = max(self.peak, total)


def _federation(clients: int) -> str:
    return f"num-supernodes={clients} client-resources-num-cpus=1 init-args-num-cpus=2"


def _one_run(app: str, clients: int, rounds: int, work: Path, cache: Path) -> dict[str, Any]:
    """One ``flwr run`` of ``app`` (``fedzg`` or ``plain``); its round times and peak RSS."""
    with FlwrCli() as cli, RssPeak(cli.home) as rss:
        t0 = time.perf_counter()
        if app == "fedzg":
            name = f"scale-{clients}"
            entry, log = cli.run(
                f'output-dir="{work}" run-name="{name}" num-server-rounds={rounds} '
                f'strategy="fedavg" model.name="fedgen-cnn" data.dataset="mnist-offline" '
                f'data.partition="iid" data.cache-dir="{cache}" '
                f"server.fraction-train={FRACTION} server.fraction-evaluate={FRACTION}",
                _federation(clients), timeout=3600,
            )
            walls = [r["wall-s"] for r in read_rounds(work / name)[1:]]
        else:
            out = work / f"echo-{clients}.json"
            entry, log = cli.run(
                f'output="{out}" num-server-rounds={rounds} '
                f"fraction-train={FRACTION} fraction-evaluate={FRACTION}",
                _federation(clients), timeout=3600, app=ECHO,
            )
            walls = json.loads(out.read_text())["wall-s"]
        total = time.perf_counter() - t0
    if entry["status"] != "finished:completed" or len(walls) != rounds:
        raise RuntimeError(f"{app} at {clients} clients: {entry['status']}\n{log[-3000:]}")
    return {
        "cold-round-s": walls[0],
        "steady-round-s": statistics.median(walls[1:]),
        "round-s": walls,
        "peak-rss-gb": rss.peak / 1e9,
        "run-s": total,
    }


def _warm_cache(cache: Path) -> None:
    from fedapp.config import DataConfig
    from fedapp.task.data import load_server_test

    load_server_test(DataConfig.model_validate(_data_defaults(cache)), 0)


def _data_defaults(cache: Path) -> dict[str, Any]:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as f:
        table = tomllib.load(f)["tool"]["flwr"]["app"]["config"]["data"]
    return {**table, "dataset": "mnist-offline", "partition": "iid", "cache-dir": str(cache)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--with-3000", action="store_true", help="add a 3000-client row")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/scale.json")
    args = ap.parse_args()
    counts = [*args.clients, *([3000] if args.with_3000 else [])]
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (round 1 is the cold round)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fz-scale-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "data-cache"
        _warm_cache(cache)
        for n in counts:
            load = os.getloadavg()[0]
            row: dict[str, Any] = {"clients": n, "sampled": max(1, int(n * FRACTION)),
                                   "load-1min-before": load}
            for app in ("fedzg", "plain"):
                row[app] = _one_run(app, n, args.rounds, work, cache)
                print(f"  {n} clients, {app}: {row[app]['round-s']}", flush=True)
            rows.append(row)
    print(f"\n{args.rounds} rounds, fraction-train = fraction-evaluate = {FRACTION}, 2 Ray actors "
          f"(1 CPU each); {os.cpu_count()} cores, shared with other jobs")
    head = (f"{'clients':>8}{'sampled':>8}{'fedzg steady s':>15}{'plain steady s':>15}{'ratio':>7}"
            f"{'fedzg cold s':>13}{'plain cold s':>13}{'cold diff s':>12}{'fedzg RSS GB':>13}"
            f"{'plain RSS GB':>13}")
    print(head)
    for r in rows:
        f, p = r["fedzg"], r["plain"]
        print(f"{r['clients']:>8}{r['sampled']:>8}{f['steady-round-s']:>15.2f}"
              f"{p['steady-round-s']:>15.2f}{f['steady-round-s'] / p['steady-round-s']:>7.2f}"
              f"{f['cold-round-s']:>13.2f}{p['cold-round-s']:>13.2f}"
              f"{f['cold-round-s'] - p['cold-round-s']:>12.2f}{f['peak-rss-gb']:>13.2f}"
              f"{p['peak-rss-gb']:>13.2f}")
    atomic_write_json(args.out, {
        "rounds": args.rounds, "fraction": FRACTION, "cpus": os.cpu_count(),
        "note": "2 shared cores; other jobs ran at the same time", "rows": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
