"""GPUs in simulation, as far as a CPU machine can check it (docs/gpu.md, issue 17).

Ray gives a simulated client with ``client-resources-num-gpus = 0`` no visible
GPU (``CUDA_VISIBLE_DEVICES`` empty) and one with a fraction a shared GPU; the
app then picks the device per node from ``client.device`` or the node's own
``device`` in ``--node-config``. zo-seed replicas on CPU and CUDA nodes agree
because directions have the same bits on both (tests/test_directions.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from clients.plans import resolve_node
from conftest import ROOT, pyproject_run_config
from fedapp.config import load_config, load_node_config
from fedapp.task.evaluate import resolve_device


def test_auto_picks_cuda_only_where_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="'cuda' requested but torch sees no CUDA device"):
        resolve_device("cuda")


def test_a_client_that_ray_gives_no_gpu_trains_on_the_cpu() -> None:
    # what a num-gpus = 0 actor sees on a GPU machine: CUDA_VISIBLE_DEVICES=""
    code = "from fedapp.task.evaluate import resolve_device; print(resolve_device('auto'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=True, timeout=120)
    assert out.stdout.strip() == "cpu"


def test_node_config_device_wins_in_a_mixed_federation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = load_config(pyproject_run_config() | {"client.device": "auto"})
    gpu_node = load_node_config({"partition-id": 0, "num-partitions": 2})
    cpu_node = load_node_config({"partition-id": 1, "num-partitions": 2, "device": "cpu"})
    assert resolve_node(gpu_node, cfg).device == torch.device("cuda")
    assert resolve_node(cpu_node, cfg).device == torch.device("cpu")

