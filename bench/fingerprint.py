"""Numerical fingerprint of the app: record it before a refactor, compare it after.

A refactor that only moves code must give the same numbers. This script runs,
with fixed seeds and one torch thread, (a) the default experiment (pyproject
defaults, 10 nodes as the Quickstart uses, 3 rounds) through the real ServerApp
``main`` on the in-process Grid, and (b) a short in-process run of every
strategy with the settings its tests use. For each it keeps

- every ``metrics.jsonl`` row without its wall-clock fields;
- a digest of every message sent and received, in order (arrays, configs and
  metrics, wall-clock and memory metrics left out), so a difference names the
  first message that changed;
- a digest of the final global model and of the strategy's checkpoint state.

Floats are kept exactly (``repr``), so the comparison is bit for bit::

    python -m bench.fingerprint --out before.json          # before the change
    python -m bench.fingerprint --out after.json           # after it
    python -m bench.fingerprint --compare before.json after.json

``--compare`` prints every difference and exits 1 when there is one. The machine
and the torch build must be the same for both runs (floating-point kernels differ
across CPUs and versions). About 2 minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict

from fedapp.harness import InProcessGrid, default_run_config

#: Keys measured by a clock or the process's memory: they differ between identical runs.
VOLATILE = frozenset({
    "wall-s", "elapsed-s", "train-phase-s", "evaluate-phase-s", "train-s", "peak-mem-mb",
})

DIGITS = {"data.dataset": "digits", "data.partition": "iid"}

#: (name, run-config overrides, nodes): the settings of each strategy's tests. FedGen,
#: zo-seed and FedVTC run 2 rounds: their round 2 uses what round 1 built (generator,
#: replay history, pooled statistics and decoder), which round 1 alone never exercises.
CASES: list[tuple[str, dict[str, Any], int]] = [
    ("fedavg", {**DIGITS, "num-server-rounds": 1, "client.lr": 0.1, "client.local-epochs": 2}, 3),
    ("fedprox", {**DIGITS, "strategy": "fedprox", "fedprox.mu": 0.5, "num-server-rounds": 1,
                 "client.lr": 0.1, "client.local-epochs": 2}, 3),
    ("fedavg-mixed", {**DIGITS, "client.trainer": "mixed", "client.zo-fraction": 0.5,
                      "num-server-rounds": 1, "client.lr": 0.1, "zo.local-steps": 5,
                      "zo.lr": 1e-3}, 4),
    ("fedgen", {**DIGITS, "strategy": "fedgen", "num-server-rounds": 2, "client.lr": 0.05,
                "client.momentum": 0.0, "client.local-steps": 20,
                "fedgen.generator-steps": 5}, 3),
    ("zo-seed", {**DIGITS, "strategy": "zo-seed", "client.trainer": "zo", "num-server-rounds": 2,
                 "zo.local-steps": 4, "zo.num-directions": 2, "zo.lr": 1e-3}, 3),
    ("heron-sfl", {**DIGITS, "strategy": "heron-sfl", "client.trainer": "split-zo",
                   "num-server-rounds": 1, "heron.batch-size": 32, "heron.client-lr": 1e-3,
                   "heron.server-lr": 3e-3}, 3),
    ("fedzge", {**DIGITS, "strategy": "fedzge", "num-server-rounds": 1, "model.name": "mlp",
                "model.clients": "0:fedgen-cnn,1:mlp,2:cnn", "fedzge.synthetic-samples": 40,
                "fedzge.num-directions": 3, "fedzge.latent-dim": 16,
                "fedzge.generator-width": 8, "fedzge.local-epochs": 2, "fedzge.batch-size": 64,
                "fedzge.server-steps": 3, "fedzge.distill-steps": 3}, 3),
    ("fedvtc", {"data.dataset": "digits", "data.alpha": 1.0, "strategy": "fedvtc",
                "num-server-rounds": 2, "client.local-epochs": 2,
                "model.clients": "vtc-cnn-0.5,vtc-cnn-1"}, 3),
]


def canonical(obj: Any) -> Any:
    """A JSON-able, order-stable form of ``obj``: tensors and arrays become digests."""
    if isinstance(obj, torch.Tensor):
        return canonical(obj.detach().cpu().contiguous().numpy())
    if isinstance(obj, np.ndarray):
        h = hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()[:16]
        return f"{obj.dtype}{list(obj.shape)}:{h}"
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, bytes):
        return "bytes:" + hashlib.sha256(obj).hexdigest()[:16]
    return obj


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(obj), sort_keys=True).encode()).hexdigest()[:16]


def content_digest(content: RecordDict) -> str:
    """Arrays, configs and metrics of one message (volatile metrics left out)."""
    out: dict[str, Any] = {}
    for name, record in content.array_records.items():
        out[f"arrays/{name}"] = {k: v.numpy() for k, v in record.items()}
    for name, record in content.config_records.items():
        out[f"config/{name}"] = dict(record)
    for name, record in content.metric_records.items():
        out[f"metrics/{name}"] = {k: v for k, v in record.items() if k not in VOLATILE}
    return digest(out)


def messages(grid: InProcessGrid) -> list[list[Any]]:
    """``[type, node, digest]`` for every message sent, then every reply, in order."""
    rows: list[list[Any]] = []
    for direction, msgs in (("down", grid.sent), ("up", grid.received)):
        for m in msgs:
            node = m.metadata.dst_node_id if direction == "down" else m.metadata.src_node_id
            body = f"error:{m.error.reason}" if m.has_error() else content_digest(m.content)
            rows.append([direction, m.metadata.message_type, node, body])
    return rows


def run_case(overrides: dict[str, Any], num_nodes: int, out_dir: Path, name: str) -> dict[str, Any]:
    """One run of the real ServerApp ``main`` on the in-process Grid, fingerprinted."""
    from fedapp.client_app import app as client_app
    from fedapp.results import read_rounds
    from fedapp.server_app import main

    cfg = {**default_run_config(), "output-dir": str(out_dir), "run-name": name,
           "data.cache-dir": str(out_dir / "data-cache"), **overrides}
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    grid = InProcessGrid(client_app, cfg, num_nodes)
    t0 = time.perf_counter()
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    seconds = time.perf_counter() - t0
    run = out_dir / name
    rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_rounds(run)]
    ckpt = torch.load(run / "model.pt", weights_only=False)
    print(f"{name:14s} {len(rows) - 1} round(s), {len(grid.sent):3d} messages, {seconds:6.1f} s",
          flush=True)
    return {
        "rows": canonical(rows),
        "messages": messages(grid),
        "model": digest(ckpt["state_dict"]),
        "strategy-state": digest(ckpt["strategy"]),
        "clients": json.loads((run / "clients.json").read_text()),
        "selected": canonical(json.loads((run / "selected.json").read_text())),
    }


def fingerprint() -> dict[str, Any]:
    torch.set_num_threads(1)
    result: dict[str, Any] = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="fedzg-fingerprint-") as tmp:
        out = Path(tmp)
        result["default"] = run_case({"num-server-rounds": 3}, 10, out, "default")
        for name, overrides, nodes in CASES:
            # the tests' own settings: no strategy card under them
            result[name] = run_case({"strategy-card": False, **overrides}, nodes, out, name)
    return result


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Every leaf where ``a`` and ``b`` differ, as ``path: a != b``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} entries != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprint JSON here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        diffs = differences(before, after)
        print("\n".join(diffs) if diffs else "identical")
        return 1 if diffs else 0
    result = fingerprint()
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
