"""Federated partitions by index (docs/evaluation.md, Dirichlet partition) and label histograms.

Offline and local pools are split here without flwr-datasets: each function
below computes every partition at once and returns, for each partition id, the
indices into ``labels`` it owns, in the order flwr-datasets 0.6.1 gives them.
They reproduce its ``IidPartitioner``, ``DirichletPartitioner`` (no
self-balancing, shuffled) and ``PathologicalPartitioner`` (first-deterministic,
shuffled) draw for draw from the same ``numpy.random.default_rng(seed)``, so a
run partitions exactly as it did through flwr-datasets, without importing it
(seconds: it pulls in its visualisation module, seaborn and scipy) or building a
Hugging Face dataset over the pool. ``tests/test_partition_identity.py`` checks
the equality against flwr-datasets itself. Hub datasets still go through
flwr-datasets' ``FederatedDataset`` with the partitioner objects of
:func:`make_partitioner`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

DIRICHLET_MAX_TRIES = 10  # flwr-datasets resamples up to 10 more times for min_partition_size


def _check_count(num_partitions: int, num_rows: int) -> None:
    if num_partitions > num_rows:
        raise ValueError(
            f"{num_partitions} partitions need at least as many samples; the pool has {num_rows}"
        )


def iid(labels: np.ndarray, num_partitions: int, **_: object) -> list[np.ndarray]:
    """Contiguous, near-equal slices of the (already shuffled) pool.

    ``labels`` (N,). The first ``N mod num_partitions`` partitions get one extra
    sample, as ``datasets.Dataset.shard(contiguous=True)`` does.
    """
    div, mod = divmod(len(labels), num_partitions)
    bounds = [div * i + min(i, mod) for i in range(num_partitions + 1)]
    return [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(num_partitions)]


def dirichlet(
    labels: np.ndarray,
    num_partitions: int,
    *,
    alpha: float,
    min_partition_size: int,
    seed: int,
    **_: object,
) -> list[np.ndarray]:
    """Per-class shares drawn from Dir(alpha) (Hsu et al., 2019), then shuffled per partition.

    ``labels`` (N,). For each class in ascending order one draw of
    ``rng.dirichlet(alpha * 1_K)`` (K = ``num_partitions``) splits that class's
    indices at ``floor(cumsum(p) * n_class)``; the whole draw is repeated while a
    partition holds fewer than ``min_partition_size`` samples (at most 10 more
    times). Each partition's indices are then shuffled with the same generator.
    """
    _check_count(num_partitions, len(labels))
    rng = np.random.default_rng(seed)
    alphas = np.array([float(alpha)], dtype=float).repeat(num_partitions)
    by_class = [np.nonzero(labels == k)[0] for k in np.unique(labels)]
    for attempt in range(DIRICHLET_MAX_TRIES + 1):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for members in by_class:
            cuts = (np.cumsum(rng.dirichlet(alphas)) * len(members)).astype(int)[:-1]
            for part, piece in zip(parts, np.split(members, cuts), strict=True):
                part.extend(piece.tolist())
        if min(len(p) for p in parts) >= min_partition_size:
            break
        warnings.warn(
            f"The specified min_partition_size ({min_partition_size}) was not satisfied for "
            f"alpha ({alpha}) after {attempt} attempts; drawing from the Dirichlet again",
            stacklevel=2,
        )
    else:
        raise ValueError(
            "The max number of attempts (10) was reached. "
            "Please update the values of alpha and try again."
        )
    out = [np.asarray(p, dtype=np.int64) for p in parts]
    for indices in out:
        rng.shuffle(indices)
    return out


def pathological(
    labels: np.ndarray,
    num_partitions: int,
    *,
    classes_per_client: int,
    seed: int,
    **_: object,
) -> list[np.ndarray]:
    """Each partition holds ``classes_per_client`` classes (McMahan et al., 2017).

    ``labels`` (N,). Partition ``i`` gets class ``i mod C`` first, then further
    distinct classes drawn uniformly with ``rng.choice`` until it has
    ``classes_per_client``; each class's indices are cut into as many near-equal
    contiguous pieces as partitions hold it (``np.array_split``), handed out in
    partition order; each partition's indices are then shuffled.
    """
    _check_count(num_partitions, len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels).tolist()
    if classes_per_client > len(classes):
        raise ValueError(
            f"classes_per_client={classes_per_client} is greater than the number of "
            f"classes in the pool ({len(classes)})"
        )
    held: list[list[int]] = []
    for pid in range(num_partitions):
        mine = [classes[pid % len(classes)]]
        while len(mine) < classes_per_client:
            label = rng.choice(classes, size=1)[0]
            if label not in mine:
                mine.append(label)
        held.append(mine)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    unused: list[int] = []
    for label in classes:
        holders = [pid for pid in range(num_partitions) if label in held[pid]]
        members = np.where(labels == label)[0]
        if len(holders) > len(members):
            raise ValueError(
                f"class {label} is held by {len(holders)} partitions but has only "
                f"{len(members)} samples; lower the number of partitions or classes_per_client"
            )
        if not holders:
            unused.append(label)
            continue
        for pid, piece in zip(holders, np.array_split(members, len(holders)), strict=True):
            parts[pid].append(piece)
    if unused:
        warnings.warn(f"Classes: {unused} will NOT be used: no partition holds them", stacklevel=2)
    out = [np.concatenate(p).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]
    for indices in out:
        rng.shuffle(indices)
    return out


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "pathological": pathological,
}


def partition_all(
    kind: str,
    labels: np.ndarray,
    num_partitions: int,
    *,
    alpha: float,
    min_partition_size: int,
    classes_per_client: int,
    seed: int,
) -> list[np.ndarray]:
    """Every partition's indices into ``labels`` (N,) for partitioner ``kind``.

    ``labels`` must already be shuffled: ``iid`` takes contiguous slices.
    """
    if num_partitions < 1:
        raise ValueError(f"the number of partitions must be at least 1, got {num_partitions}")
    return PARTITIONERS[kind](
        np.asarray(labels),
        num_partitions,
        alpha=alpha,
        min_partition_size=min_partition_size,
        classes_per_client=classes_per_client,
        seed=seed,
    )


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
    """The flwr-datasets partitioner ``kind`` for hub datasets (``FederatedDataset``)."""
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


def label_histogram(labels: np.ndarray, num_classes: int) -> list[int]:
    """Count of each class 0..C-1 in ``labels`` (N,)."""
    return np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes].tolist()
