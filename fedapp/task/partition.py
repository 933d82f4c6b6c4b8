"""Partitioning with flwr-datasets partitioners, and label histograms.

docs/evaluation.md (Dirichlet partition).

The pool is partitioned by index: a tiny Hugging Face ``Dataset`` with only a
``label`` and an ``index`` column goes through the partitioner, so images never
have to be encoded into Arrow just to be split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def make_partitioner(
    kind: str,
    num_partitions: int,
    *,
    alpha: float,
    min_partition_size: int,
    classes_per_client: int,
    seed: int,
    label_column: str = "label",
) -> Partitioner:
    """Build the flwr-datasets partitioner named ``kind`` (``iid | dirichlet | pathological``)."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    factories = {
        "iid": lambda: IidPartitioner(num_partitions=num_partitions),
        "dirichlet": lambda: DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=label_column,
            alpha=alpha,
            min_partition_size=min_partition_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        ),
        "pathological": lambda: PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by=label_column,
            num_classes_per_partition=classes_per_client,
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=seed,
        ),
    }
    return factories[kind]()


def partition_indices(
    labels: np.ndarray, partitioner: Partitioner, partition_id: int
) -> np.ndarray:
    """Indices into ``labels`` (N,) that ``partitioner`` assigns to ``partition_id``.

    ``labels`` must already be shuffled: ``IidPartitioner`` takes contiguous slices.
    """
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict(
        {"label": labels.astype(np.int64), "index": np.arange(len(labels), dtype=np.int64)}
    )
    part = partitioner.load_partition(partition_id)
    return np.asarray(part["index"], dtype=np.int64)


def label_histogram(labels: np.ndarray, num_classes: int) -> list[int]:
    """Count of each class 0..C-1 in ``labels`` (N,)."""
    return np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes].tolist()
