"""The fault matrix: every strategy × every ``client.fault``, run in-process; and the one-line errors.

Each cell runs a federation in this process (:func:`fedapp.harness.run_federation`:
the ServerApp's strategy, screening, recorder, ``metrics.jsonl`` and checkpoint, without
``curves.png``, which would take most of a cell's time) on three in-process nodes (digits, IID, tiny settings, every node sampled) with partition 1
injecting the fault (:mod:`clients.handlers.faults`), and reads back what a user
would: ``metrics.jsonl`` (rejected, failed per phase) and ``model.pt`` (the global
model and the strategy's state: zo-seed history, FedZGE generator, FedVTC
statistics). A cell passes when

- the run completes (every round recorded);
- the bad reply is counted: ``rejected`` for a corrupt payload, ``failed-*`` for an
  error reply (``raise``) or no reply (``silent``), in every trained round;
- everything the server holds is finite, and equal, bit for bit, to the run in which
  partition 1 never answers (``silent``, the reference): what the good clients alone
  give.

``python -m bench.reliability`` prints the matrix (Markdown) and the one-line
errors of ``python -m fedapp check`` for typical bad run configs, and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from fedapp.harness import default_run_config, run_federation
from fedapp.sections import FaultName
from fedapp.task.seeding import PURPOSE_SAMPLING, derive_seed

FAULTS: tuple[str, ...] = tuple(f for f in get_args(FaultName) if f != "none")
REFERENCE = "silent"
#: Faults whose reply reaches the server and fails screening; the rest fail (error, no reply).
REJECTED = frozenset(FAULTS) - {"raise", "silent"}

_TINY = {"data.dataset": "digits", "data.partition": "iid", "num-server-rounds": 1,
         "client.local-epochs": 1, "client.local-steps": 3, "server.fraction-evaluate": 0.0}

#: Strategy -> tiny settings (the strategy tests' fixtures, shortened).
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": "fedavg"},
    "fedprox": {"strategy": "fedprox"},
    "fedgen": {"strategy": "fedgen", "num-server-rounds": 2, "fedgen.generator-steps": 2},
    "zo-seed": {"strategy": "zo-seed", "client.trainer": "zo", "num-server-rounds": 2,
                "zo.local-steps": 2, "zo.num-directions": 2, "zo.lr": 2e-3},
    "heron-sfl": {"strategy": "heron-sfl", "client.trainer": "split-zo",
                  "heron.batch-size": 32, "heron.client-lr": 1e-3, "heron.server-lr": 3e-3},
    "fedzge": {"strategy": "fedzge", "model.name": "mlp", "model.clients": "0:fedgen-cnn,1:mlp,2:cnn",
               "fedzge.synthetic-samples": 20, "fedzge.num-directions": 2,
               "fedzge.latent-dim": 16, "fedzge.generator-width": 8, "fedzge.local-epochs": 1,
               "fedzge.batch-size": 64, "fedzge.server-steps": 2, "fedzge.distill-steps": 2},
    "fedvtc": {"strategy": "fedvtc", "model.clients": "vtc-cnn-0.5,vtc-cnn-1"},
}
#: The phase whose message carries the payload a fault corrupts.
PHASE = {"fedzge": "failed-query"}


def _leaves(obj: Any, path: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Every numeric leaf of a checkpoint (tensors, arrays, numbers), with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}/{i}")
    elif isinstance(obj, torch.Tensor):
        yield path, obj.detach().cpu().numpy()
    elif isinstance(obj, (np.ndarray, float, int)) and not isinstance(obj, bool):
        yield path, np.asarray(obj)


def server_state(run: Path) -> dict[str, np.ndarray]:
    """The global model and the strategy's state after the last round, from ``model.pt``."""
    saved = torch.load(run / "model.pt", weights_only=True)
    return dict(_leaves({"model": saved["state_dict"], "strategy": saved["strategy"]}))


def run_cell(strategy: str, fault: str, base: dict[str, Any], out: Path) -> dict[str, Any]:
    """One strategy under one fault on three nodes (partition 1 faulty); what the user sees."""
    cfg = {**base, **_TINY, **STRATEGIES[strategy], "client.fault": fault,
           "client.fault-partitions": "1", "output-dir": str(out),
           "run-name": f"{strategy}-{fault}"}
    random.seed(derive_seed(cfg["seed"], PURPOSE_SAMPLING))  # as the ServerApp does
    t0 = time.perf_counter()
    rows = run_federation(cfg, 3)[1:]
    state = server_state(out / cfg["run-name"])
    return {
        "strategy": strategy, "fault": fault, "rounds": len(rows),
        "completes": len(rows) == cfg["num-server-rounds"],
        "rejected": [r["rejected"] for r in rows],
        "failed": [r.get(PHASE.get(strategy, "failed-train"), 0) for r in rows],
        "clients": [r["clients"] for r in rows],
        "finite": all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f"),
        "state": state, "seconds": round(time.perf_counter() - t0, 2),
    }


def judge(cell: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The cell's verdict: how the fault was handled, counted, and the server state kept sound."""
    kind = "rejected" if cell["fault"] in REJECTED else "failed"
    counted = all(n >= 1 for n in cell[kind])
    same = cell["state"].keys() == reference["state"].keys() and all(
        np.array_equal(v, reference["state"][k]) for k, v in cell["state"].items()
    )
    return {"strategy": cell["strategy"], "fault": cell["fault"], "handled": kind,
            "counted": counted, "completes": cell["completes"], "finite": cell["finite"],
            "equal-to-good-clients": same,
            "ok": counted and cell["completes"] and cell["finite"] and same,
            "seconds": cell["seconds"]}


def run_matrix(base: dict[str, Any], out: Path, strategies: list[str] | None = None,
               faults: tuple[str, ...] = FAULTS) -> list[dict[str, Any]]:
    """Every cell of the matrix, judged against the strategy's ``silent`` run."""
    verdicts = []
    for strategy in strategies or list(STRATEGIES):
        with contextlib.redirect_stderr(io.StringIO()):
            reference = run_cell(strategy, REFERENCE, base, out)
            cells = [reference] + [run_cell(strategy, f, base, out)
                                   for f in faults if f != REFERENCE]
        verdicts += [judge(c, reference) for c in cells]
    return verdicts


def table(verdicts: list[dict[str, Any]]) -> str:
    """Strategy × fault: ``rejected`` / ``failed``, ``✓`` when counted, complete and uncorrupted."""
    faults = list(dict.fromkeys(v["fault"] for v in verdicts))
    strategies = list(dict.fromkeys(v["strategy"] for v in verdicts))
    cell = {(v["strategy"], v["fault"]): v for v in verdicts}
    lines = ["| strategy | " + " | ".join(faults) + " |", "|---" * (len(faults) + 1) + "|"]
    for s in strategies:
        marks = [f"{cell[s, f]['handled']} {'✓' if cell[s, f]['ok'] else '✗'}" for f in faults]
        lines.append(f"| {s} | " + " | ".join(marks) + " |")
    return "\n".join(lines)


#: Typical mistakes: (the key the error must name, ``python -m fedapp check --run-config`` arguments).
BAD_CONFIGS: tuple[tuple[str, str], ...] = (
    ("num-server-rounds", "num-server-rounds=0"),
    ("num-server-rounds", 'num-server-rounds="2"'),
    ("strategy", 'strategy="fedavgg"'),
    ("client.lrr", "client.lrr=0.1"),
    ("client.fault-partitions", 'client.fault="nan" client.fault-partitions="x"'),
    ("client.fault", 'client.fault="nann"'),
    ("run-name", 'run-name=".."'),
    ("resume", 'resume="true"'),
    ("client.trainer", 'strategy="heron-sfl" client.trainer="fo"'),
    ("data.dataset", 'data.dataset="local"'),
    ("preset", 'preset="nope"'),
)


def one_line_errors(out: Path) -> list[tuple[str, str, str]]:
    """``(key, arguments, the line printed)`` for each of :data:`BAD_CONFIGS`."""
    from fedapp.__main__ import main as fedapp_main

    lines = []
    for key, args in BAD_CONFIGS:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            fedapp_main(["check", "--run-config", f'{args} output-dir="{out}"', "--no-data"])
        lines.append((key, args, buf.getvalue().strip()))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/reliability.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        verdicts = run_matrix(default_run_config(), Path(tmp))
        seconds = time.perf_counter() - t0
        errors = one_line_errors(Path(tmp) / "check")
    print(table(verdicts))
    print(f"\n{len(verdicts)} cells in {seconds:.1f} s; all ok: {all(v['ok'] for v in verdicts)}\n")
    for _, arguments, line in errors:
        print(f"$ python -m fedapp check --run-config '{arguments}'\n{line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cells": verdicts, "seconds": round(seconds, 1),
                                    "errors": [{"run-config": a, "line": line} for _, a, line in errors]},
                                   indent=1))


if __name__ == "__main__":
    main()
