"""The zo-seed history as data: plain rows, wire sizes, and content keys of replicas.

docs/strategies/zo-seed.md (Global model, catch-up, consistency; Growth). Three
things that let zo-seed stay flat in the number of rounds and of nodes:

- :func:`round_to_row` / :func:`round_from_row`: one history round as a plain JSON
  row (appended to ``journal.jsonl`` once, never rewritten); the float32 scalars
  and float64 rates round-trip exactly through JSON's shortest float repr;
- :func:`round_bytes`: what a round costs on the wire (``fedapp.wire.zo_seed``'s
  packing), so the server can send the model when a node's missed history would
  outweigh it (``zo.catchup-max-rounds = "auto"``);
- :func:`config_key` / :func:`initial_key` / :func:`next_key`: a hash chain over θ^1 and the history, so
  every replica of θ^t built by the same replay has the same key; nodes of one
  machine share replicas by key (:mod:`clients.replicas`).

No Flower, no torch beyond reading tensor bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedapp.task.zo import ZORound, ZOStep

#: Bytes of one round's fixed part on the wire: meta (5 int64) and rates (2 float64).
ROUND_OVERHEAD_BYTES = 5 * 8 + 2 * 8


def round_to_row(entry: ZORound) -> dict[str, Any]:
    """``entry`` as a plain JSON row (``round`` first, as every journal entry carries it)."""
    return {
        "round": entry.round,
        "kind": "zo-history",
        "seed_base": entry.seed_base,
        "steps": [
            {"seeds": list(s.seeds), "grads": list(s.grads), "lr": s.lr,
             "num_directions": s.num_directions, "weight_decay": s.weight_decay}
            for s in entry.steps
        ],
    }


def round_from_row(row: Mapping[str, Any]) -> ZORound:
    """Inverse of :func:`round_to_row` (bit-exact: grads are float32 values, rates float64)."""
    return ZORound(
        int(row["round"]), int(row["seed_base"]),
        tuple(
            ZOStep(tuple(int(x) for x in s["seeds"]), tuple(float(g) for g in s["grads"]),
                   float(s["lr"]), int(s["num_directions"]), float(s["weight_decay"]))
            for s in row["steps"]
        ),
    )


def round_bytes(entry: ZORound, explicit_seeds: bool) -> int:
    """Array bytes of ``entry`` in a ``zo-history`` record: 4 B per scalar (+8 B per seed)."""
    pairs = sum(len(s.grads) for s in entry.steps)
    return ROUND_OVERHEAD_BYTES + pairs * (4 + (8 if explicit_seeds else 0))


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Array bytes of a model's state dict (what ``zo-model`` costs on the wire)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def config_key(model: str, init_seed: int, spec: str) -> str:
    """Key of θ^1 built from the shared init seed (every node builds the same bits)."""
    return hashlib.sha256(f"init:{model}:{init_seed}:{spec}".encode()).hexdigest()[:32]


def initial_key(state: Mapping[str, torch.Tensor], round_: int = 1) -> str:
    """Key of a replica given whole (θ^1, or the model a bootstrap sends for ``round_``)."""
    h = hashlib.sha256(f"model:{round_}".encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()[:32]


def next_key(key: str, entry: ZORound) -> str:
    """Key of Replay(θ with ``key``, ``entry``): the chain commits to every replayed value."""
    h = hashlib.sha256(f"{key}:{entry.round}:{entry.seed_base}".encode())
    for s in entry.steps:
        h.update(np.asarray(s.seeds, dtype=np.int64).tobytes())
        h.update(np.asarray(s.grads, dtype=np.float32).tobytes())
        h.update(np.asarray([s.lr, s.weight_decay], dtype=np.float64).tobytes())
        h.update(np.asarray([s.num_directions], dtype=np.int64).tobytes())
    return h.hexdigest()[:32]
