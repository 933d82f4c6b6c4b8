"""Shared fixtures: CPU only, offline, the run config read from pyproject.toml."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parents[1]

#: Trainer of each SuperNode in the deployment tests (loopback, failure, namespaces).
#: Switch one entry to "zo" once the zeroth-order trainer is merged.
DEPLOY_TRAINERS = ("fo", "fo", "fo")


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> Flower's dotted run-config keys."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def pyproject_run_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return flatten(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


@pytest.fixture
def run_config(tmp_path: Path) -> dict[str, Any]:
    """The pyproject defaults, writing into tmp_path, with a shared data cache."""
    cfg = pyproject_run_config()
    cfg["output-dir"] = str(tmp_path / "results")
    cfg["data.cache-dir"] = str(ROOT / ".pytest_cache" / "fedzg-data")
    return cfg
