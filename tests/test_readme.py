"""The README's configuration table matches pyproject.toml key for key."""

from __future__ import annotations

import json
import re

from conftest import ROOT, pyproject_run_config

ROW = re.compile(r"^\| `([a-z0-9.-]+)` \| (str|int|float|bool) \| `(.*)` \| .+ \|$")


def readme_table() -> dict[str, tuple[str, object]]:
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), json.loads(m.group(3)))
    return rows


def test_every_run_config_key_is_documented_with_its_default() -> None:
    documented = readme_table()
    defaults = pyproject_run_config()
    assert set(documented) == set(defaults)
    for key, value in defaults.items():
        kind, default = documented[key]
        assert kind == type(value).__name__, key
        assert default == value, key


def test_ci_runs_the_readme_test_command() -> None:
    text = (ROOT / "README.md").read_text()
    assert "<!-- quickstart-test -->" in text and "<!-- quickstart-run -->" in text
    assert "quickstart-test" in (ROOT / ".ci" / "run").read_text()
