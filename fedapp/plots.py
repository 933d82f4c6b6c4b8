"""``curves.png`` (one run) and the overlay of ``python -m fedapp compare`` (matplotlib, Agg)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fedapp.results import atomic_write_bytes


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Plot the rows of ``metrics.jsonl`` into ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else r[key] for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(rounds, series("accuracy"), marker="o")
    axes[0].set(xlabel="round", ylabel="global test accuracy", ylim=(0, 1))
    axes[1].plot(rounds, series("loss"), marker="o", color="tab:red")
    axes[1].set(xlabel="round", ylabel="global test loss")
    axes[2].bar(rounds, [b / 2**20 for b in series("bytes-up")], label="up", alpha=0.7)
    axes[2].bar(
        rounds,
        [b / 2**20 for b in series("bytes-down")],
        bottom=[b / 2**20 for b in series("bytes-up")],
        label="down",
        alpha=0.7,
    )
    axes[2].set(xlabel="round", ylabel="MiB per round (all clients)")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_overlay(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Several runs' accuracy and bytes (up + down) per round, one line each (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (acc, traffic) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, rows in runs.items():
        rounds = [r["round"] for r in rows]
        accuracy = [float("nan") if r.get("accuracy") is None else r["accuracy"] for r in rows]
        mib = [(r["bytes-up"] + r["bytes-down"]) / 2**20 for r in rows]
        acc.plot(rounds, accuracy, marker="o", markersize=3, label=label)
        traffic.plot(rounds[1:], mib[1:], marker="o", markersize=3, label=label)  # round 0 sends nothing
    acc.set(xlabel="round", ylabel="global test accuracy", ylim=(0, 1))
    traffic.set(xlabel="round", ylabel="MiB per round (up + down, all clients)")
    traffic.set_yscale("log")
    for ax in (acc, traffic):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
