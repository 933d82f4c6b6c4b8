"""The results contract: what every run writes under ``<output-dir>/<run-name>/``.

- ``config.json``: the validated config, versions and seed;
- ``metrics.jsonl``: one JSON object per server round (round 0 is the initial model),
  appended line by line;
- ``journal.jsonl``: append-only strategy state, one JSON object per entry with its
  ``round`` (zo-seed's history; the checkpoint stays flat in the number of rounds);
- ``clients.json``: each client partition's label histogram, trainer and model;
- ``model.pt``: the latest global model (written by the ServerApp each round);
- ``selected.json``: the round the run reports (:func:`select_round`) and its numbers;
- ``curves.png``: accuracy, loss and bytes per round (:mod:`fedapp.plots`).

Every other file is written whole to a temporary name and renamed into place, so a
crash never leaves a half-written file. The two ``.jsonl`` files are appended with one
``write`` of one whole line and fsynced, so a round costs the same at round 10 as at
round 500; a crash can at worst tear the last line, which :func:`read_jsonl` drops
(and a resume rewrites both files up to the checkpoint's round). Files get the mode a
plain ``open`` would give (0644 under the usual umask 022; a stricter umask keeps them
private).

A run never silently replaces another: :func:`check_run_dir` refuses a directory
that holds results unless the run resumes it or sets ``overwrite = true``, and a
fresh :class:`ResultsWriter` removes every file of the old run, so no stale
``model.pt`` or ``curves.png`` survives next to new metrics. Standard library only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fedapp.config import ConfigError

ROUND_KEYS = (
    "round",
    "accuracy",
    "loss",
    "bytes-up",
    "bytes-down",
    "clients",
    "failed-train",
    "failed-evaluate",
    "failed-query",
    "rejected",
    "skipped-evaluate",
    "wall-s",
)


#: Every file a run writes into its directory (``model.pt``: :mod:`fedapp.checkpoint`).
RESULT_FILES = (
    "config.json", "metrics.jsonl", "journal.jsonl", "clients.json", "model.pt",
    "selected.json", "curves.png",
)
METRICS_NAME, JOURNAL_NAME = "metrics.jsonl", "journal.jsonl"


def _umask() -> int:
    """The process umask (read by setting it; Linux also shows it in /proc/self/status)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of result files: what ``open()`` would create (0644 under umask 022), not mkstemp's 0600.
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: Path, obj: Any) -> None:
    """Append ``obj`` as one JSON line with a single ``write`` (``O_APPEND``), then fsync.

    A crash leaves the file without the line or with a torn last line that
    :func:`read_jsonl` ignores; the lines before it are never touched.
    """
    data = (json.dumps(obj, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short append to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path, upto_round: int | None = None) -> list[dict[str, Any]]:
    """The complete lines of a ``.jsonl`` file (a torn last line dropped), up to a round."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_bytes().split(b"\n")[:-1]:  # the part after the last newline is torn
        if line.strip():
            rows.append(json.loads(line))
    if upto_round is not None:
        rows = [r for r in rows if int(r["round"]) <= upto_round]
    return rows


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def run_dir(output_dir: str, run_name: str) -> Path:
    """Absolute results directory (the ServerApp's cwd is the SuperLink's, not the user's).

    Raises :class:`ConfigError` when ``run_name`` resolves outside ``output_dir``
    (``..``, or a symbolic link pointing elsewhere).
    """
    parent = Path(output_dir).expanduser().resolve()
    path = (parent / run_name).resolve()
    if path.parent != parent:
        raise ConfigError(
            f"run-name = {run_name!r} resolves to {path}, outside output-dir {parent}; "
            "use a plain directory name"
        )
    return path


def check_run_dir(directory: Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over another run's results (``resume``/``overwrite`` allow it)."""
    existing = [name for name in RESULT_FILES if (directory / name).exists()]
    if existing and not resuming and not overwrite:
        raise ConfigError(
            f"{directory} already holds a run ({', '.join(existing)}); choose another run-name, "
            "or set overwrite=true to replace it or resume=true to continue it"
        )


def read_rounds(directory: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (for plots, benchmarks and tests)."""
    return read_jsonl(directory / METRICS_NAME)


def select_round(rows: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The round a run reports: ``final`` (the last row) or ``best_on_val``.

    ``best_on_val`` takes the highest ``val-accuracy`` over the trained rounds (round 0
    is the initial model; ties go to the earliest round). Test accuracy never selects.
    """
    if rule == "final":
        chosen = rows[-1]
    elif rule == "best_on_val":
        trained = [r for r in rows if r["round"] > 0 and "val-accuracy" in r] or rows[-1:]
        chosen = max(trained, key=lambda r: (r.get("val-accuracy", float("-inf")), -r["round"]))
    else:
        raise ValueError(f"unknown selection rule {rule!r} (allowed: final, best_on_val)")
    keys = ("round", "accuracy", "loss", "val-accuracy", "val-loss")
    return {"rule": rule, **{k: chosen[k] for k in keys if k in chosen}}


class NothingAggregated(RuntimeError):
    """A run in which no client reply was aggregated: its model is the initial one."""


def check_aggregated(rows: list[dict[str, Any]]) -> None:
    """Raise :class:`NothingAggregated` when no trained round aggregated a client reply."""
    trained = [r for r in rows if r["round"] > 0]
    if trained and not any(r["clients"] for r in trained):
        failed, rejected = (sum(int(r[k]) for r in trained)
                            for k in ("failed-train", "rejected"))
        raise NothingAggregated(
            f"no client reply was aggregated in {len(trained)} round(s) ({failed} failed-train, "
            f"{rejected} rejected: see the 'Rejected ... reply' and failure lines above); "
            "the model is still the initial one"
        )


class ResultsWriter:
    """Owns one run's results directory."""

    def __init__(
        self, directory: Path, config: dict[str, Any], rows: list[dict[str, Any]] | None = None,
        journal: list[dict[str, Any]] | None = None,
    ) -> None:
        """Start ``directory`` afresh (the old run's files removed), or from ``rows`` (and the
        strategy's ``journal``) when resuming: both files are then rewritten once, whole.

        Call :func:`check_run_dir` first: this replaces whatever run is there.
        """
        self.dir = directory
        self.rows: list[dict[str, Any]] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES if rows is None else (METRICS_NAME, JOURNAL_NAME):
            (self.dir / name).unlink(missing_ok=True)  # a resumed run keeps its checkpoint
        atomic_write_json(self.dir / "config.json", config)
        if rows:
            self.rows = list(rows)
            _write_lines(self.dir / METRICS_NAME, self.rows)
        if journal:
            _write_lines(self.dir / JOURNAL_NAME, journal)

    def add_round(self, row: dict[str, Any]) -> None:
        """Append one round to ``metrics.jsonl`` (one line, :func:`append_line`)."""
        missing = [k for k in ROUND_KEYS if k not in row]
        if missing:
            raise ValueError(f"round row lacks {missing}")
        self.rows.append(row)
        append_line(self.dir / METRICS_NAME, row)

    def add_journal(self, entries: list[dict[str, Any]]) -> None:
        """Append the strategy's journal entries of a round (each carries its ``round``)."""
        for entry in entries:
            append_line(self.dir / JOURNAL_NAME, entry)

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.dir / name, obj)


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode())
