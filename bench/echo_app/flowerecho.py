"""A numpy echo app on Flower's Message API: the plain-Flower baseline of ``bench/scale.py``.

Clients reply to ``train`` with the arrays they received and to ``evaluate`` with a
zero loss; every reply carries ``num-examples`` = 1 and where it ran: the
process id and the inode of its network namespace (``/proc/self/ns/net``), which
tells Ray nodes in different namespaces apart (``tests/test_ray_cluster.py``).
The ServerApp runs Flower's ``FedAvg`` on one float32 array of ``num-params``
values and times every round the way fedzg's ``metrics.jsonl`` does (from one
server-side evaluation callback to the next).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client_app = ClientApp()
server_app = ServerApp()


def _origin() -> dict[str, int]:
    return {"num-examples": 1, "pid": os.getpid(), "netns": os.stat("/proc/self/ns/net").st_ino}


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord(_origin())})
    return Message(content, reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({**_origin(), "loss": 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    origins: list[dict[str, int]] = []

    def collect(replies: list[RecordDict], weight_key: str) -> MetricRecord:
        for reply in replies:
            m = reply["metrics"]
            origins.append({"pid": int(m["pid"]), "netns": int(m["netns"])})  # type: ignore[call-overload]
        return MetricRecord({"replies": len(replies)})

    strategy = FedAvg(
        fraction_train=float(cfg["fraction-train"]),  # type: ignore[arg-type]
        fraction_evaluate=float(cfg["fraction-evaluate"]),  # type: ignore[arg-type]
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=int(cfg["min-available-nodes"]),  # type: ignore[call-overload]
        train_metrics_aggr_fn=collect,
        evaluate_metrics_aggr_fn=collect,
    )
    walls: list[float] = []
    last = time.perf_counter()

    def stamp(server_round: int, arrays: ArrayRecord) -> None:
        nonlocal last
        now = time.perf_counter()
        if server_round > 0:
            walls.append(now - last)
        last = now

    initial = np.random.default_rng(0).standard_normal(int(cfg["num-params"]))  # type: ignore[call-overload]
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([initial.astype(np.float32)]),
        num_rounds=int(cfg["num-server-rounds"]),  # type: ignore[call-overload]
        evaluate_fn=stamp,
    )
    if cfg["output"]:
        out = Path(str(cfg["output"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"wall-s": walls, "origins": origins}))
