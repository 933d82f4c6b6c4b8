"""Shared fixtures: CPU only, offline, the run config read from pyproject.toml."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.flwr_cli import FlwrCli
from fedapp.harness import default_run_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
_REPLICAS = tempfile.mkdtemp(prefix="fedzg-zo-replicas-tests-")  # zo-seed replicas on disk
os.environ.setdefault("FEDZG_ZO_REPLICAS", _REPLICAS)
atexit.register(shutil.rmtree, _REPLICAS, True)

ROOT = Path(__file__).resolve().parents[1]
DATA_CACHE = ROOT / ".pytest_cache" / "fedzg-data"  # shared by every test run's data.cache-dir

#: Trainer of each SuperNode in the deployment tests (loopback, failure, namespaces): a mixed
#: first-/zeroth-order federation, each node's trainer set by its node-config.
DEPLOY_TRAINERS = ("fo", "zo", "fo")


def pyproject_run_config() -> dict[str, Any]:
    """The run config ``flwr run`` builds from pyproject.toml (Flower's dotted keys)."""
    return default_run_config()


@pytest.fixture(scope="session")
def flwr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlwrCli]:
    """One local SuperLink (private ``FLWR_HOME``) for every end-to-end ``flwr run`` test."""
    with FlwrCli(tmp_path_factory.mktemp("flwr-home")) as cli:
        yield cli


@pytest.fixture
def run_config(tmp_path: Path) -> dict[str, Any]:
    """The pyproject defaults, writing into tmp_path, with a shared data cache."""
    cfg = pyproject_run_config()
    cfg["output-dir"] = str(tmp_path / "results")
    cfg["data.cache-dir"] = str(DATA_CACHE)
    return cfg
