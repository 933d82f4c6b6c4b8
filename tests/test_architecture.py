"""Import rules and size limits of docs/architecture.md: imports point down only.

Layers, top to bottom: the two entry points (``fedapp.server_app``,
``fedapp.client_app``) and the in-process harness above them; ``strategies``
(server side) and ``clients`` (client side), which never import each other; the
shared base in ``fedapp`` (config, wire, task, results, ...). Flower is imported
only through its public packages, and not at all by the maths (``fedapp.task``),
the config or the trainers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

from fedapp.wire import common, fedvtc, fedzge, split, weights, zo_seed

PACKAGES = ("fedapp", "strategies", "clients")
OURS = set(PACKAGES)
PUBLIC_FLWR = ("flwr.app", "flwr.serverapp", "flwr.clientapp", "flwr.common")

#: module (or package prefix) -> the first-party and Flower imports it may have.
ALLOWED: dict[str, set[str]] = {
    "fedapp.defaults": set(),
    "fedapp.sections": set(),
    "fedapp.config": {"fedapp.defaults", "fedapp.sections"},
    "fedapp.task": {"fedapp.config", "fedapp.task"},
    "fedapp.wire": {"fedapp.config", "fedapp.task", "fedapp.wire", "flwr.app"},
    "fedapp.ledger": {"flwr.app"},
    "fedapp.results": {"fedapp.config"},
    "fedapp.plots": {"fedapp.results"},
    "fedapp.checkpoint": {"fedapp.config", "fedapp.results"},
    "fedapp.liveness": {"fedapp.config", "flwr.app", "flwr.serverapp", "flwr.common"},
    "fedapp.recorder": {"fedapp.checkpoint", "fedapp.config", "fedapp.ledger", "fedapp.results",
                        "fedapp.task", "flwr.app", "flwr.common"},
    "fedapp.server_app": {"fedapp", "strategies", *PUBLIC_FLWR},
    "fedapp.client_app": {"clients.handlers", "flwr.app", "flwr.clientapp"},
    "fedapp.harness": {"fedapp.client_app", "fedapp.config", "fedapp.defaults", "fedapp.results",
                       "fedapp.server_app", "fedapp.task", "flwr.app", "flwr.serverapp",
                       "flwr.supercore.task_identity"},  # the one Flower internal
    "strategies": {"fedapp.config", "fedapp.defaults", "fedapp.ledger", "fedapp.task", "fedapp.wire",
                   "strategies",
                   "flwr.app", "flwr.serverapp", "flwr.common"},
    "clients": {"fedapp.config", "fedapp.task", "clients"},
    "clients.handlers": {"fedapp.config", "fedapp.task", "fedapp.wire", "clients",
                         "flwr.app", "flwr.clientapp"},
    "fedapp.check": {"fedapp.config", "fedapp.defaults", "fedapp.checkpoint", "fedapp.results",
                     "fedapp.task", "clients", "strategies"},  # an entry point
    "fedapp.compare": {"fedapp.defaults", "fedapp.results", "fedapp.plots"},
    "fedapp.__main__": {"fedapp.check", "fedapp.compare"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def modules() -> list[tuple[str, Path, set[str]]]:
    """(module, path, first-party and Flower imports) of every module in the three packages."""
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            targets = {t for t in imports(path) if t.split(".")[0] in OURS | {"flwr"}}
            out.append((module_name(path), path, targets))
    return out


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def rule_for(module: str) -> set[str]:
    keys = [k for k in ALLOWED if within(module, k)]
    assert keys, f"{module} has no import rule in tests/test_architecture.py"
    return ALLOWED[max(keys, key=len)]


def test_imports_point_down_only() -> None:
    violations = []
    for module, path, targets in modules():
        if module == "fedapp":
            continue
        allowed = rule_for(module)
        for target in sorted(targets):
            if not any(within(target, a) for a in allowed):
                violations.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    ("package", "importer"), [("strategies", "fedapp.server_app"), ("clients", "fedapp.client_app")]
)
def test_only_one_entry_point_imports_each_side(package: str, importer: str) -> None:
    # `fedapp.check` is the command-line entry point: its verdict is the apps' own checks
    offenders = [str(path.relative_to(ROOT)) for module, path, targets in modules()
                 if within(module, "fedapp") and module not in (importer, "fedapp.check")
                 and any(within(t, package) for t in targets)]
    assert not offenders, f"only {importer} may import {package}: {offenders}"


def test_server_and_client_sides_never_import_each_other() -> None:
    crossing = [f"{path.relative_to(ROOT)} imports {t}" for module, path, targets in modules()
                for t in targets
                if (within(module, "strategies") and within(t, "clients"))
                or (within(module, "clients") and within(t, "strategies"))]
    assert not crossing, "\n".join(crossing)


def test_maths_config_and_trainers_import_no_flower() -> None:
    flower = [f"{path.relative_to(ROOT)} imports {t}" for module, path, targets in modules()
              for t in targets
              if within(t, "flwr") and (
                  within(module, "fedapp.task") or module == "fedapp.config"
                  or (within(module, "clients") and not within(module, "clients.handlers")))]
    assert not flower, "\n".join(flower)


def test_no_module_is_over_400_lines() -> None:
    long = {str(path.relative_to(ROOT)): n for _, path, _ in modules()
            if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def test_metric_keys_are_spelled_only_in_the_wire_package() -> None:
    keys = {key for wire in (common, weights, zo_seed, split, fedzge, fedvtc)
            for name, value in vars(wire).items() if name.endswith("_METRICS") for key in value}
    assert {"num-examples", "train-loss", "step-flops", "acc-global", "vtc-loss"} <= keys
    keys -= {common.STEPS}  # also a plain field name (zo-seed's checkpointed history)
    literals = []
    for module, path, _ in modules():
        if within(module, "fedapp.wire"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in keys:
                literals.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not literals, "\n".join(literals)
