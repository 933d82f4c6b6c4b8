"""README.md and docs/: the key table, every command and every relative link.

- docs/configuration.md's key table matches pyproject.toml key for key.
- Every ``bash`` block says how CI exercises it: ``<!-- ci: test names -->`` names tests that
  run the same command path, ``<!-- not-ci: reason -->`` says why CI cannot (GPU, hub, Docker
  engine, several machines, hours of benchmark), and the two Quickstart markers are run by
  ``.ci/run`` (the test command) and checked here (the run command).
- Whatever the marker, every command is checked without running it: each ``flwr run`` run
  config (inline or a preset file, parsed by Flower's own parser) validates against the schema
  with its federation's node count, each ``flower-supernode --node-config`` validates as a node
  config, and each ``python -m bench.<script>`` command line is parsed by the script's own
  argument parser.
- Every relative link and image resolves to a file, and every ``#anchor`` to a heading.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import ROOT, pyproject_run_config
from flwr.common.config import parse_config_args

from fedapp.config import load_config, load_node_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Pages the layout issue adds in another branch; links to them are accepted until they exist.
PENDING = {"docs/architecture.md", "docs/extending.md"}

ROW = re.compile(r"^\| `([a-z0-9.-]+)` \| (str|int|float|bool) \| `(.*)` \| .+ \|$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^\s*<!-- (ci|not-ci|quickstart-run|quickstart-test)(?::\s*(.*?))? -->$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
ENV = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")  # an environment assignment before a command
FEDERATION_KEYS = {"num-supernodes", "client-resources-num-cpus", "client-resources-num-gpus"}


@dataclass(frozen=True)
class Block:
    """One fenced ``bash`` block: where it is, its marker and its commands."""

    page: str
    line: int
    marker: str
    detail: str
    commands: tuple[tuple[str, ...], ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def commands(script: str) -> tuple[tuple[str, ...], ...]:
    """The simple commands of a shell snippet, environment assignments dropped."""
    out: list[tuple[str, ...]] = []
    for line in script.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            end = token.endswith(";") and token != ";"
            token = token.rstrip(";") if end else token
            if token in {"&&", "||", "|", ";"}:
                out.append(tuple(current))
                current = []
                continue
            if current or not ENV.fullmatch(token):
                current.append(token)
            if end:
                out.append(tuple(current))
                current = []
        out.append(tuple(current))
    return tuple(c for c in out if c)


def bash_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if m.group(2) == "bash":
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARKER.match(prev)
            blocks.append(
                Block(
                    rel(path),
                    i + 1,
                    mark.group(1) if mark else "",
                    (mark.group(2) or "") if mark else prev.strip(),
                    commands("\n".join(line.strip() for line in lines[i + 1 : end])),
                )
            )
        i = end + 1
    return blocks


BLOCKS = [block for page in DOCS for block in bash_blocks(page)]


def test_pages_are_found() -> None:
    names = {rel(p) for p in DOCS}
    assert {"README.md", "docs/README.md", "docs/configuration.md"} <= names
    assert len(BLOCKS) > 20


# --- the configuration table ---


def configuration_table() -> dict[str, tuple[str, object]]:
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), json.loads(m.group(3)))
    return rows


def test_every_run_config_key_is_documented_with_its_default() -> None:
    documented = configuration_table()
    defaults = pyproject_run_config()
    assert set(documented) == set(defaults)
    for key, value in defaults.items():
        kind, default = documented[key]
        assert kind == type(value).__name__, key
        assert default == value, key


# --- commands ---


def test_ci_runs_the_readme_test_command() -> None:
    text = (ROOT / "README.md").read_text()
    assert "<!-- quickstart-test -->" in text and "<!-- quickstart-run -->" in text
    assert "quickstart-test" in (ROOT / ".ci" / "run").read_text()
    quick = [b for b in BLOCKS if b.marker.startswith("quickstart")]
    assert [(b.page, b.marker) for b in quick] == [
        ("README.md", "quickstart-run"),
        ("README.md", "quickstart-test"),
    ]
    assert quick[1].commands[-1] == ("pytest",)


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_every_bash_block_says_how_ci_exercises_it(block: Block) -> None:
    assert block.marker, f"{block}: no <!-- ci: ... --> or <!-- not-ci: ... --> above the block"
    if block.marker == "not-ci":
        assert len(block.detail) > 10, f"{block}: give the reason CI cannot run it"
    if block.marker == "ci":
        tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
        names = [n.strip() for n in block.detail.split(",")]
        assert names and all(names), block
        for name in names:
            assert re.search(rf"^\s*def {re.escape(name)}\(", tests, re.M), (
                f"{block}: no test named {name}"
            )


def option(cmd: tuple[str, ...], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def check_flwr_run(block: Block, cmd: tuple[str, ...]) -> None:
    assert cmd[2] == ".", f"{block}: flwr run must submit this app (.)"
    run_config = option(cmd, "--run-config") or ""
    if "<" in run_config:  # a placeholder such as '<same overrides> resume=true'
        run_config = run_config.split(">", 1)[1]
    if run_config.endswith(".toml"):
        assert (ROOT / run_config).is_file(), f"{block}: no preset {run_config}"
        run_config = str(ROOT / run_config)
    overrides = parse_config_args([run_config]) if run_config else {}
    defaults = pyproject_run_config()
    unknown = set(overrides) - set(defaults)
    assert not unknown, f"{block}: unknown keys {sorted(unknown)}"
    cfg = load_config({**defaults, **overrides})
    federation = option(cmd, "--federation-config")
    if federation is not None:
        options = parse_config_args([federation])
        assert set(options) <= FEDERATION_KEYS, f"{block}: {federation}"
        nodes = int(options["num-supernodes"])
        assert nodes >= cfg.server.min_available_nodes, f"{block}: too few nodes for the run"


def check_supernode(block: Block, cmd: tuple[str, ...]) -> None:
    node_config = option(cmd, "--node-config")
    assert node_config, f"{block}: a SuperNode needs --node-config"
    load_node_config(parse_config_args([node_config]))


class _Parsed(Exception):
    """Raised instead of running a benchmark once its arguments parsed."""


def check_benchmark(block: Block, cmd: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(cmd[2])
    original = argparse.ArgumentParser.parse_args

    def parse_args(
        self: argparse.ArgumentParser,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> NoReturn:
        original(self, args, namespace)  # argparse exits (code 2) on an unknown option
        raise _Parsed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        patch.setattr(sys, "argv", [cmd[2], *cmd[3:]])
        with pytest.raises(_Parsed):
            module.main()


def checked(cmd: tuple[str, ...]) -> bool:
    return (
        cmd[:2] == ("flwr", "run")
        or cmd[0] == "flower-supernode"
        or (cmd[:2] == ("python", "-m") and cmd[2].startswith("bench."))
    )


CHECKED = [b for b in BLOCKS if any(checked(c) for c in b.commands)]


@pytest.mark.parametrize("block", CHECKED, ids=str)
def test_commands_validate_without_running(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run configs, node configs and benchmark command lines, each by its own parser."""
    for cmd in block.commands:
        if cmd[:2] == ("flwr", "run"):
            check_flwr_run(block, cmd)
        elif cmd[0] == "flower-supernode":
            check_supernode(block, cmd)
        elif checked(cmd):
            check_benchmark(block, cmd, monkeypatch)


# --- links ---


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def prose(path: Path, code_spans: bool = False) -> str:
    """The page without fenced blocks (and inline code spans), where links are not links."""
    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", path.read_text(), flags=re.M | re.S)
    return text if code_spans else re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path, code_spans=True).splitlines():
        m = re.match(r"^#{1,6} (.*)$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


LINKS = {
    page: [t for t in LINK.findall(prose(page)) if not re.match(r"^[a-z]+:", t)] for page in DOCS
}


def test_links_are_found() -> None:
    assert sum(map(len, LINKS.values())) > 100


def broken(page: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    name = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
    if name in PENDING and not dest.exists():
        return None
    if not dest.exists():
        return f"{target}: no such file"
    if anchor and dest.suffix != ".md":
        return f"{target}: an anchor into a non-page"
    if anchor and anchor not in anchors(dest):
        return f"{target}: no such heading"
    return None


@pytest.mark.parametrize("page", DOCS, ids=rel)
def test_relative_links_resolve(page: Path) -> None:
    problems = [p for p in (broken(page, t) for t in LINKS[page]) if p]
    assert not problems, f"{rel(page)}: " + "; ".join(problems)
