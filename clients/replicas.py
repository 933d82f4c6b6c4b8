"""zo-seed replicas shared by every node of a machine, keyed by content (no Flower).

docs/strategies/zo-seed.md (Growth). A zo-seed node needs θ^s, the global model of
the round it last synchronised to, to catch up by replay. Every node synchronised
to round s by the same replay holds the same bits, named by the hash chain of
:mod:`fedapp.task.zo_history`; so instead of one replica per node in
``context.state`` (memory growing with nodes × model size in simulation), a node
keeps only ``(round, key)`` and the replicas live here:

- in memory: the :data:`IN_MEMORY` most recently used, shared by the nodes of this
  process (all nodes sampled in a round ask for the same one or two);
- on local disk: one file per key under :func:`default_root` (shared by every
  process of the machine: Ray actors, deployment ClientApp processes), written
  atomically, removed once the server would send the model instead of the history
  (rounds older than ``target − zo-keep-rounds``) and in any case beyond the newest
  :data:`ON_DISK` rounds, so disk use is bounded by that many model copies.

A node whose replica is not on this machine (another Ray node, a cleaned temporary
directory) fails that one message; the server then resynchronises it from θ^1 or
by sending the model.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

#: Replicas kept in memory per process (the current round's and the previous one's).
IN_MEMORY = 2
#: Replicas kept on disk per run: older rounds are removed even inside the catch-up window, so
#: disk use stays at most this many model copies; a node whose replica went fails one message
#: and is resynchronised (with 10 % of nodes sampled per round, a gap of 64 rounds has p ≈ 0.001).
ON_DISK = 64
#: Environment variable naming the directory for on-disk replicas.
ROOT_ENV = "FEDZG_ZO_REPLICAS"

StateDict = dict[str, torch.Tensor]


def default_root() -> Path:
    """``$FEDZG_ZO_REPLICAS``, else ``<tmp>/fedzg-zo-replicas-<uid>``."""
    given = os.environ.get(ROOT_ENV)
    return Path(given) if given else Path(tempfile.gettempdir()) / f"fedzg-zo-replicas-{os.getuid()}"


class ReplicaStore:
    """Replicas of θ^t by key: a small LRU in memory over files on local disk."""

    def __init__(self, root: Path | None = None, in_memory: int = IN_MEMORY) -> None:
        self.root = root
        self.in_memory = in_memory
        self._cache: OrderedDict[str, StateDict] = OrderedDict()
        self._pruned: dict[Path, int] = {}  # directory -> rounds below this are gone

    @property
    def directory(self) -> Path:
        return self.root if self.root is not None else default_root()

    def _path(self, space: str, round_: int, key: str) -> Path:
        return self.directory / space / f"{round_:09d}-{key}.pt"

    def get(self, space: str, round_: int, key: str) -> StateDict | None:
        """The replica of round ``round_`` with ``key`` (callers copy from it, never into it)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self._path(space, round_, key)
        try:
            state: StateDict = torch.load(path, map_location="cpu", weights_only=True)
        except (FileNotFoundError, EOFError, RuntimeError):
            return None
        self._remember(key, state)
        return state

    def put(self, space: str, round_: int, key: str, state: StateDict) -> None:
        """Keep a copy of ``state`` (in memory, and on disk unless another process wrote it).

        ``space`` separates runs (files of one run are pruned by that run's rounds).
        """
        copy = {k: v.detach().clone() for k, v in state.items()}
        self._remember(key, copy)
        path = self._path(space, round_, key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(copy, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.prune(space, round_ - ON_DISK + 1)

    def prune(self, space: str, before_round: int) -> int:
        """Remove ``space``'s files of rounds older than ``before_round``; returns how many."""
        removed, directory = 0, self.directory / space
        if before_round <= self._pruned.get(directory, 0) or not directory.is_dir():
            return 0
        self._pruned[directory] = before_round
        for path in directory.glob("*.pt"):
            try:
                round_ = int(path.name.split("-", 1)[0])
            except ValueError:
                continue
            if round_ < before_round:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def memory_bytes(self) -> int:
        """Bytes of the replicas held in memory (benchmarks)."""
        return sum(t.numel() * t.element_size() for s in self._cache.values() for t in s.values())

    def _remember(self, key: str, state: StateDict) -> None:
        self._cache[key] = state
        self._cache.move_to_end(key)
        while len(self._cache) > self.in_memory:
            self._cache.popitem(last=False)


#: The process's store (simulation: the nodes of one Ray actor share it).
STORE = ReplicaStore()
