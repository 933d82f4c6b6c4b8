"""Compare runs: ``python -m fedapp compare results/a results/b ... [--out compare.png]``.

Reads only the results contract (:mod:`fedapp.results`): ``config.json`` and
``metrics.jsonl`` of each run directory. Prints one row per run and writes an
overlay plot (:func:`fedapp.plots.plot_overlay`). Columns:

- ``final``: global test accuracy of the last round;
- ``best (test-selected)``: the highest test accuracy of any trained round and its
  round. Picking a round by its test accuracy is optimistic; it is shown as a
  ceiling, never as a result (``selected.json`` holds the run's reported round);
- ``KiB up``/``KiB down``: bytes per client-round, i.e. summed over trained rounds and
  divided by the train messages sent (``sampled``; ``clients`` in older files);
- ``s/round``: mean wall-clock seconds of a trained round;
- ``differs``: every config key whose value is not the same in all runs
  (``run-name``, ``output-dir``, ``resume`` and ``overwrite`` left out).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedapp.defaults import flatten
from fedapp.results import read_rounds

#: Keys that differ between any two runs without changing the experiment.
IGNORED_KEYS = frozenset({"run-name", "output-dir", "resume", "overwrite"})


class CompareError(ValueError):
    """A directory that is not a run's results; the message is one line."""


@dataclass(frozen=True, slots=True)
class Run:
    """One run's config (flat keys) and per-round rows."""

    name: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]

    @classmethod
    def load(cls, directory: str) -> Run:
        d = Path(directory).expanduser()
        if not (d / "metrics.jsonl").is_file() or not (d / "config.json").is_file():
            raise CompareError(f"{d} is not a run's results directory (needs config.json and "
                               "metrics.jsonl)")
        try:
            record = json.loads((d / "config.json").read_text())
            rows = read_rounds(d)
        except (json.JSONDecodeError, OSError) as exc:
            raise CompareError(f"{d}: unreadable results ({exc})") from None
        if not rows:
            raise CompareError(f"{d}: metrics.jsonl has no rounds")
        return cls(d.resolve().name, flatten(record.get("config", {})), rows)

    @property
    def trained(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["round"] > 0]

    def summary(self) -> dict[str, Any]:
        """The table's numbers for this run (NaN where a run has none)."""
        nan = float("nan")
        trained = self.trained
        scored = [r for r in trained if _finite(r.get("accuracy"))]
        best = max(scored, key=lambda r: (r["accuracy"], -r["round"])) if scored else None
        messages = sum(int(r.get("sampled", r.get("clients", 0))) for r in trained)
        return {
            "run": self.name,
            "strategy": self.config.get("strategy", "?"),
            "rounds": self.rows[-1]["round"],
            "final": self.rows[-1].get("accuracy", nan),
            "best": best["accuracy"] if best else nan,
            "best-round": best["round"] if best else None,
            "kib-up": sum(r["bytes-up"] for r in trained) / messages / 1024 if messages else nan,
            "kib-down": sum(r["bytes-down"] for r in trained) / messages / 1024 if messages else nan,
            "s-per-round": sum(r["wall-s"] for r in trained) / len(trained) if trained else nan,
        }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values are not all equal (a key missing in a run counts as different)."""
    keys = set().union(*(r.config for r in runs)) - IGNORED_KEYS
    missing = object()
    return sorted(
        k for k in keys
        if len({json.dumps(r.config.get(k, missing), default=str) for r in runs}) > 1
    )


def table(runs: list[Run]) -> str:
    """The comparison as aligned text, one row per run."""
    keys = differing_keys(runs)
    header = ["run", "strategy", "rounds", "final", "best (test-selected)", "KiB up",
              "KiB down", "s/round", "differs"]
    lines = [header]
    for run in runs:
        s = run.summary()
        best = f"{s['best']:.4f} (r{s['best-round']})" if s["best-round"] is not None else "nan"
        differs = " ".join(f"{k}={json.dumps(run.config.get(k))}" for k in keys) or "-"
        lines.append([s["run"], str(s["strategy"]), str(s["rounds"]), f"{s['final']:.4f}", best,
                      f"{s['kib-up']:.1f}", f"{s['kib-down']:.1f}", f"{s['s-per-round']:.2f}",
                      differs])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip()
        for line in lines
    )


def main(directories: list[str], out: str) -> int:
    """Print the table, write the overlay plot; 1 with one line if a directory is not a run."""
    from fedapp.plots import plot_overlay

    try:
        runs = [Run.load(d) for d in directories]
    except CompareError as exc:
        print(f"fedzg compare: {exc}")
        return 1
    names = [r.name for r in runs]
    labels = names if len(set(names)) == len(names) else [str(Path(d)) for d in directories]
    print(table(runs))
    path = Path(out).expanduser().resolve()
    plot_overlay({label: run.rows for label, run in zip(labels, runs, strict=True)}, path)
    print(f"overlay plot: {path}")
    return 0
