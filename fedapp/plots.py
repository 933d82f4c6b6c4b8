"""``curves.png``: accuracy and loss per round, bytes per round (matplotlib, Agg)."""

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
