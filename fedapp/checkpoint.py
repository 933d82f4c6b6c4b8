"""The per-round checkpoint that lets a killed ServerApp resume (``resume = true``).

After every server round the ServerApp writes ``<output-dir>/<run-name>/model.pt``
atomically (write to a temporary file, fsync, rename), so a crash leaves the
previous round's checkpoint or the new one, never half of one. It holds the
complete server state:

- ``round``: the last completed round; ``model``, ``state_dict``: the global model;
- ``strategy``: ``strategy.state_dict()`` (generators, optimisers, histories);
- ``label-counts``: ``clients.json``;
- ``rng``: Python's ``random`` (Flower samples nodes with it), NumPy's and torch's
  global generator states;
- ``config``: the validated config, to refuse resuming with a different experiment;
- ``elapsed-s``: wall time so far, so ``elapsed-s`` keeps counting across a resume.

``resume = true`` reads the run's own ``model.pt``; ``resume = "<path>"`` reads that
file (or ``<path>/model.pt``). The run then continues from round ``round + 1``.
The rows of ``metrics.jsonl`` and the strategy's ``journal.jsonl`` (both appended
every round, :mod:`fedapp.results`) are read from the checkpoint's directory up to
``round`` and rewritten once, so no round is duplicated or lost, and the checkpoint
itself does not grow with the number of rounds.

Format :data:`FORMAT` holds tensors and plain Python values only (NumPy values
are converted on saving), so it is read with ``torch.load(weights_only=True)``:
resuming from an untrusted file cannot run code. Older checkpoints (pickled NumPy
state) are refused with one line, as are truncated or corrupt files.
"""

from __future__ import annotations

import io
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedapp.config import AppConfig, ConfigError
from fedapp.results import JOURNAL_NAME, METRICS_NAME, atomic_write_bytes, read_jsonl

CHECKPOINT_NAME = "model.pt"
FORMAT = 3  # 3: rows in metrics.jsonl, history in journal.jsonl; 2: rows inside; 1: pickled NumPy

#: Config keys that may differ between the killed run and its resumption.
RESUMABLE_CHANGES = frozenset({"resume", "output-dir", "run-name", "num-server-rounds", "timeouts"})


@dataclass
class Checkpoint:
    """Complete server state after round :attr:`round`."""

    round: int
    model: str
    state_dict: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    label_counts: dict[int, list[int]]
    config: dict[str, Any]
    elapsed_s: float
    rng: dict[str, Any]
    rows: list[dict[str, Any]] | None = None  # metrics.jsonl up to `round`, filled on loading
    journal: list[dict[str, Any]] | None = None  # journal.jsonl up to `round`, filled on loading

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            _plain({
                "format": FORMAT,
                "round": self.round,
                "model": self.model,
                "state_dict": self.state_dict,
                "strategy": self.strategy,
                "label-counts": self.label_counts,
                "config": self.config,
                "elapsed-s": self.elapsed_s,
                "rng": self.rng,
            }),
            buf,
        )
        return buf.getvalue()

    def save(self, directory: Path) -> Path:
        path = directory / CHECKPOINT_NAME
        atomic_write_bytes(path, self.to_bytes())
        return path


def _plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with NumPy scalars as Python numbers and arrays as tensors; others refused.

    What remains is what ``torch.load(weights_only=True)`` reads back.
    """
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype,
                                       torch.Size)):
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v, f"{where}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where} is a {type(obj).__name__}: checkpoints hold tensors and plain values")


def capture_rng() -> dict[str, Any]:
    """The global generator states a server run may draw from (plain values and tensors)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _read(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``, its failures as one :class:`ConfigError` line."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise ConfigError(f"resume: {path} is truncated or corrupt (UnpicklingError)") from None
        raise ConfigError(
            f"resume: {path} holds objects beyond tensors and plain values (a checkpoint older "
            f"than format {FORMAT}, or not fedzg's), and loading it could run code; start the "
            "run afresh"
        ) from None
    except Exception as exc:  # torch reports damage as EOFError, RuntimeError, OSError, KeyError...
        first = (str(exc).splitlines() or [""])[0].split(". ")[0]  # torch appends advice
        raise ConfigError(
            f"resume: {path} is truncated or corrupt ({type(exc).__name__}{': ' * bool(first)}{first})"
        ) from None
    if not isinstance(raw, dict) or "strategy" not in raw:
        raise ConfigError(f"resume: {path} is a model file without server state")
    if raw.get("format") != FORMAT:
        raise ConfigError(
            f"resume: {path} has checkpoint format {raw.get('format', 1)}, this fedzg reads "
            f"format {FORMAT}; start the run afresh"
        )
    return raw


def config_fingerprint(cfg: AppConfig) -> dict[str, Any]:
    """The config as compared on resume (keys in :data:`RESUMABLE_CHANGES` left out)."""
    dumped = cfg.model_dump(mode="json", by_alias=True)
    return {k: v for k, v in dumped.items() if k not in RESUMABLE_CHANGES}


def _dotted(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections as run-config keys: ``{"client": {"lr": x}}`` -> ``{"client.lr": x}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _dotted(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def checkpoint_path(cfg: AppConfig, run_directory: Path) -> Path | None:
    """Where ``cfg.resume`` points: ``None`` for a fresh run."""
    if cfg.resume is False or cfg.resume == "":
        return None
    if cfg.resume is True:
        return run_directory / CHECKPOINT_NAME
    path = Path(str(cfg.resume)).expanduser().resolve()
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: Path, cfg: AppConfig) -> Checkpoint:
    """Read a checkpoint and check it belongs to the same experiment as ``cfg``."""
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at {path} (run at least one round first)")
    raw = _read(path)
    saved, now = _dotted(raw["config"]), _dotted(config_fingerprint(cfg))
    changed = [f"{k} ({saved.get(k, 'unset')!r} -> {now.get(k, 'unset')!r})"
               for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if changed:
        raise ConfigError(
            f"resume: the config differs from the checkpoint's in {', '.join(changed)} "
            f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
        )
    if raw["round"] > cfg.num_server_rounds:
        raise ConfigError(
            f"resume: the checkpoint is at round {raw['round']}, past "
            f"num-server-rounds = {cfg.num_server_rounds}"
        )
    return Checkpoint(
        round=int(raw["round"]),
        model=str(raw["model"]),
        state_dict=raw["state_dict"],
        strategy=raw["strategy"],
        rows=read_jsonl(path.parent / METRICS_NAME, int(raw["round"])),
        journal=read_jsonl(path.parent / JOURNAL_NAME, int(raw["round"])),
        label_counts={int(k): list(v) for k, v in raw["label-counts"].items()},
        config=saved,
        elapsed_s=float(raw["elapsed-s"]),
        rng=raw["rng"],
    )
