"""Every client's data and the server's test and validation sets stay bit-identical.

Two checks that the index-based pools and NumPy partitioners of
:mod:`fedapp.task.pools` and :mod:`fedapp.task.partition` give exactly what the
earlier code gave (flwr-datasets partitioners over a Hugging Face dataset built
from the shuffled pool, per call):

- :data:`RECORDED`: SHA-256 digests of every client's (train, local test) arrays,
  in order, and of the server's sets, for offline datasets x partitioners x seeds
  x client counts. They were recorded by :func:`record` running against the code
  before the change (commit 33e69d0) and must never change.
- the partitioners against flwr-datasets 0.6.1 itself (:func:`reference_indices`,
  the former ``partition_indices``), on synthetic labels and many settings.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedapp.config import DataConfig
from fedapp.task import pools
from fedapp.task.data import DataError, load_client_data, load_server_test, load_server_val

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

#: (dataset, partition, seed, clients, data overrides)
CASES: list[tuple[str, str, int, int, dict[str, object]]] = [
    ("mnist-offline", "iid", 0, 10, {}),
    ("mnist-offline", "iid", 3, 7, {"val-size": 0.1, "local-test-size": 0.25}),
    ("mnist-offline", "iid", 1, 200, {}),
    ("mnist-offline", "dirichlet", 0, 10, {}),
    ("mnist-offline", "dirichlet", 5, 100, {"alpha": 0.3, "min-partition-size": 0}),
    ("mnist-offline", "pathological", 0, 10, {}),
    ("mnist-offline", "pathological", 2, 30, {"classes-per-client": 3}),
    ("digits", "iid", 0, 4, {}),
    ("digits", "dirichlet", 1, 6, {"alpha": 0.1, "min-partition-size": 5}),
    ("digits", "dirichlet", 0, 3, {"val-size": 0.1, "global-test-size": 0.3}),
    ("digits", "pathological", 0, 5, {"classes-per-client": 2}),
    ("digits", "pathological", 4, 13, {"classes-per-client": 4, "local-test-size": 0.0}),
]

RECORDED: dict[str, str] = {  # record() at commit 33e69d0, before the change
    "mnist-offline/iid/seed0/n10/":
        "270faf587166ce4d6df2ec407baede0e44d0e09a1933b0063fce2ec413c6be60",
    "mnist-offline/iid/seed3/n7/val-size=0.1,local-test-size=0.25":
        "3a111df37d327071794c1b8634cf37d035148e9a9364ee9447a35e0ae8aee8b2",
    "mnist-offline/iid/seed1/n200/":
        "228e59c9dc56d16bbd4ffd82bda302c7d3d8e43e610795d26258fbf0856346ea",
    "mnist-offline/dirichlet/seed0/n10/":
        "f8d57468be7ff73813f2ac73e9fa8be068f919e292cb2881c6765325ad192892",
    "mnist-offline/dirichlet/seed5/n100/alpha=0.3,min-partition-size=0":
        "b07e3e5473ec3c69b851d1a3c388dce28ecdc86e42f401e44e7f173de2e5aef4",
    "mnist-offline/pathological/seed0/n10/":
        "f33403583e6432b47064b087fd94967c7c5d9b8e21b1703eecb37cc795daeb8c",
    "mnist-offline/pathological/seed2/n30/classes-per-client=3":
        "4c61854b4154f188f55b6102d1547cab2dd8a34cfa462710553fc573414b4a45",
    "digits/iid/seed0/n4/":
        "576f9bb44f5b99d56201f46e1dd5485c522bd9d4911fc3ecb357de1aca626503",
    "digits/dirichlet/seed1/n6/alpha=0.1,min-partition-size=5":
        "bd0dd1673c604911417e4b3423e579e03348c0e55708712d4e9d934424f79d3b",
    "digits/dirichlet/seed0/n3/val-size=0.1,global-test-size=0.3":
        "ea5668910607d51fc7dadfa69db92d490ba8476b811184f7a95a6eea76e1bd3a",
    "digits/pathological/seed0/n5/classes-per-client=2":
        "10f9a368fb0f5da7320dc6851206bee0b1d593c46b295cdf1ec15e978e85af4e",
    "digits/pathological/seed4/n13/classes-per-client=4,local-test-size=0.0":
        "5e47204bb95ceac05eb1240ab0338dbeac957af9fee0c0d8631950600c610064",
}


def case_id(case: tuple[str, str, int, int, dict[str, object]]) -> str:
    dataset, partition, seed, n, extra = case
    return f"{dataset}/{partition}/seed{seed}/n{n}/" + ",".join(f"{k}={v}" for k, v in extra.items())


def data_config(dataset: str, partition: str, cache_dir: str, extra: dict[str, object]) -> DataConfig:
    with PYPROJECT.open("rb") as f:
        table = tomllib.load(f)["tool"]["flwr"]["app"]["config"]["data"]
    return DataConfig.model_validate(
        {**table, "dataset": dataset, "partition": partition, "cache-dir": cache_dir, **extra}
    )


def _feed(h: hashlib._Hash, *arrays: np.ndarray) -> None:
    for a in arrays:
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())


def digest(case: tuple[str, str, int, int, dict[str, object]], cache_dir: str) -> str:
    """SHA-256 over every client's arrays in partition order, then the server's sets."""
    dataset, partition, seed, n, extra = case
    cfg = data_config(dataset, partition, cache_dir, extra)
    h = hashlib.sha256()
    for pid in range(n):
        part = load_client_data(cfg, seed, pid, n)
        _feed(h, part.train.x, part.train.y, part.test.x, part.test.y)
        h.update(json.dumps([part.spec.channels, part.spec.height, part.spec.num_classes]).encode())
    test, _ = load_server_test(cfg, seed)
    _feed(h, test.x, test.y)
    val = load_server_val(cfg, seed)
    if val is not None:
        _feed(h, val.x, val.y)
    return h.hexdigest()


def record(cache_dir: str) -> str:
    """The :data:`RECORDED` literal for the code on ``sys.path`` (run once, before a change)."""
    return json.dumps({case_id(c): digest(c, cache_dir) for c in CASES}, indent=4)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_clients_and_server_sets_match_the_recorded_digests(case, tmp_path: Path) -> None:
    assert digest(case, str(tmp_path / "cache")) == RECORDED[case_id(case)]


def test_a_fresh_process_reads_the_same_data_from_the_cache(tmp_path: Path) -> None:
    case = CASES[4]
    pools.CACHE.clear()  # this process holds entries by recipe, whatever the directory
    first = digest(case, str(tmp_path))  # parses the pool, computes the partitions, stores both
    pools.CACHE.clear()  # as a new process would start: only the disk cache
    pools.split_pool.cache_clear()
    assert any(tmp_path.glob("*.npz")) and any(tmp_path.glob("*.x.npy"))
    assert digest(case, str(tmp_path)) == first == RECORDED[case_id(case)]


def test_an_impossible_dirichlet_split_is_a_data_error(tmp_path: Path) -> None:
    cfg = data_config("digits", "dirichlet", str(tmp_path), {"min-partition-size": 400})
    with pytest.warns(UserWarning), pytest.raises(DataError, match="cannot partition 'digits'"):
        load_client_data(cfg, 0, 0, 4)


def reference_indices(labels: np.ndarray, kind: str, n: int, **settings: object) -> list[np.ndarray]:
    """Every partition as flwr-datasets 0.6.1 gives it, over a ``label``/``index`` dataset."""
    from datasets import Dataset

    from fedapp.task.partition import make_partitioner

    def fresh() -> object:
        part = make_partitioner(kind, n, **settings)  # type: ignore[arg-type]
        part.dataset = Dataset.from_dict(
            {"label": labels.astype(np.int64), "index": np.arange(len(labels), dtype=np.int64)}
        )
        return part

    part = fresh()  # Dirichlet and pathological draw every partition on the first load
    return [np.asarray(part.load_partition(pid)["index"], dtype=np.int64) for pid in range(n)]


def _settings(rng: np.random.Generator) -> tuple[np.ndarray, str, int, dict[str, object]]:
    classes = int(rng.choice([2, 7, 10]))
    size = int(rng.choice([40, 300, 2000]))
    skew = rng.dirichlet(np.ones(classes) * 2.0)  # unbalanced classes
    labels = rng.choice(classes, size=size, p=skew).astype(np.int64)
    kind = str(rng.choice(["iid", "dirichlet", "pathological"]))
    n = int(rng.choice([1, 3, 10, 37]))
    settings = {
        "alpha": float(rng.choice([0.1, 0.5, 5.0])),
        "min_partition_size": int(rng.choice([0, 0, 2, 10])),
        "classes_per_client": int(rng.integers(1, 4)),
        "seed": int(rng.integers(0, 2**31)),
    }
    return labels, kind, n, settings


@pytest.mark.parametrize("trial", range(40))
def test_partitioners_match_flwr_datasets(trial: int) -> None:
    import warnings

    from fedapp.task.partition import partition_all

    labels, kind, n, settings = _settings(np.random.default_rng(1000 + trial))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn on redraws and unused classes
        try:
            expected: list[np.ndarray] | type[Exception] = reference_indices(labels, kind, n, **settings)
        except ValueError:
            expected = ValueError
        if expected is ValueError:
            with pytest.raises(ValueError):
                partition_all(kind, labels, n, **settings)  # type: ignore[arg-type]
            return
        got = partition_all(kind, labels, n, **settings)  # type: ignore[arg-type]
    assert len(got) == n
    for pid, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.dtype == np.int64 and np.array_equal(g, e), (kind, n, settings, pid)
