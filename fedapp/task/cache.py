"""The data cache: loaded arrays in memory and as ``.npz`` files, keyed by their recipe.

Deployment starts one ClientApp process per message, so every partition is built
once and read back from disk afterwards. A recipe is everything that determines
the arrays (the data config, the seed, the partition), plus the modification time
of local data files, so an edited file is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedapp.config import DataConfig


class ArrayCache:
    """In-process and on-disk (``.npz``) cache of loaded arrays, keyed by their recipe."""

    def __init__(self) -> None:
        self._memory: dict[str, dict[str, np.ndarray]] = {}

    @staticmethod
    def directory(cfg: DataConfig) -> Path:
        if cfg.cache_dir:
            return Path(cfg.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "fedzg"

    def get(
        self, cfg: DataConfig, recipe: dict[str, object], build: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
        if key in self._memory:
            return self._memory[key]
        path = self.directory(cfg) / f"{key}.npz"
        value = self._read(path)
        if value is None:  # built outside any `except`, so its errors chain to nothing
            value = build()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **value)
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache file
        self._memory[key] = value
        return value

    @staticmethod
    def _read(path: Path) -> dict[str, np.ndarray] | None:
        """The cached arrays, or ``None`` when the file is missing or unreadable."""
        try:
            with np.load(path) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError):
            return None


def recipe(cfg: DataConfig, seed: int, **extra: object) -> dict[str, object]:
    """Everything that determines a cached value (local files by modification time too)."""
    out: dict[str, object] = {**cfg.model_dump(exclude={"cache_dir"}), "seed": seed, **extra}
    for key in ("path", "test_path", "data_path"):
        value = out.get(key)
        if isinstance(value, str) and value and Path(value).exists():
            out[f"{key}-mtime"] = Path(value).stat().st_mtime_ns
    return out
