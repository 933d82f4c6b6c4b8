"""Import rules (STYLE §3): imports point down only; Flower internals stay out."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

THIRD_PARTY = {"torch", "numpy", "pydantic", "matplotlib", "mlxtend", "sklearn", "datasets",
               "flwr_datasets", "PIL"}
ALLOWED: dict[str, set[str]] = {
    "fedapp.defaults": set(),
    "fedapp.config": {"fedapp.defaults"},
    "fedapp.task": {"fedapp.config", "fedapp.task"},
    "fedapp.records": {"fedapp.config", "fedapp.task", "flwr.app"},
    "fedapp.results": {"fedapp.config"},
    "fedapp.plots": {"fedapp.results"},
    "strategies": {"fedapp.config", "fedapp.task", "fedapp.records", "strategies",
                   "flwr.app", "flwr.serverapp", "flwr.common"},
    "clients": {"fedapp.config", "fedapp.task", "clients"},
    "fedapp.server_app": {"fedapp", "strategies", "flwr.app", "flwr.serverapp", "flwr.common"},
    "fedapp.client_app": {"fedapp.handlers", "flwr.app", "flwr.clientapp"},
    "fedapp.handlers": {"fedapp.config", "fedapp.task", "fedapp.records", "fedapp.handlers",
                        "clients", "flwr.app"},
    "fedapp.checkpoint": {"fedapp.config", "fedapp.results"},
    "fedapp.liveness": {"fedapp.config", "flwr.app", "flwr.serverapp", "flwr.common"},
    "fedapp.check": {"fedapp.config", "fedapp.defaults", "fedapp.checkpoint", "fedapp.results",
                     "fedapp.task", "clients"},
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


def rule_for(module: str) -> set[str]:
    key = max((k for k in ALLOWED if module == k or module.startswith(k + ".")), key=len)
    return ALLOWED[key]


def test_imports_point_down_only() -> None:
    violations = []
    for package in ("fedapp", "strategies", "clients"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            if module in ("fedapp", "fedapp.bench"):
                continue
            allowed = rule_for(module)
            for target in imports(path):
                top = target.split(".")[0]
                if top in THIRD_PARTY or top not in {"fedapp", "strategies", "clients", "flwr"}:
                    continue
                if not any(target == a or target.startswith(a + ".") for a in allowed):
                    violations.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not violations, "\n".join(violations)
