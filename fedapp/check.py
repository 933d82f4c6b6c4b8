"""Preflight: validate a run config (and node configs) as the apps would, without Flower's runtime.

``python -m fedapp check --run-config '<overrides>' [--node-config '<node>' ...]``
parses the overrides exactly as ``flwr run`` does (``key=value`` pairs with TOML
values, or one ``.toml`` file), refuses keys pyproject does not define (Flower's
own refusal says only "Invalid run configuration"), then runs the ServerApp's
checks up to its first round: :func:`fedapp.config.load_config` with the
submitted overrides, the results directory (name, existing run, ``overwrite``),
the checkpoint ``resume`` names and the server's test data; and for each node
config what a ClientApp does before training: the clients' view of the run
config, the node config, and (unless ``--no-data``) the node's data. It prints
one line and exits 0 (ok) or 1 (the first problem), so CI can gate on it. No
SuperLink, Ray or network is started.

Like the two Flower entry points, this command-line entry point wires both sides:
it runs the strategy card's checks (:mod:`strategies`) and the clients' node
resolution (:mod:`clients`), so its verdict is the apps' own.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.plans import resolve_node
from fedapp.config import AppConfig, ConfigError, load_config, load_node_config
from fedapp.defaults import flatten, pyproject_defaults
from strategies import card_for

#: ``flwr run``'s pattern for one ``key=value`` pair (flwr.common.config.parse_config_args).
_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


class CheckError(ValueError):
    """A problem the preflight found; the message is one line."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a passing check resolved."""

    cfg: AppConfig
    run_dir: Path
    resumes: Path | None
    replaces: bool  # overwrite = true over an existing run
    nodes: int

    def line(self) -> str:
        start = (f"resumes from {self.resumes}" if self.resumes
                 else "replaces the existing run" if self.replaces else "new run")
        preset = f", preset {self.cfg.preset!r}" if self.cfg.preset else ""
        where = "" if Path(self.cfg.output_dir).expanduser().is_absolute() else (
            "; a relative output-dir is resolved here, the ServerApp resolves it in the "
            "SuperLink's working directory"
        )
        return (
            f"ok: {self.cfg.strategy} ({self.cfg.client.trainer}) on {self.cfg.data.dataset}, "
            f"{self.cfg.num_server_rounds} rounds{preset}; results in {self.run_dir} ({start}"
            f"{where}); {self.nodes} node config(s) checked"
        )


def parse_overrides(args: list[str], flag: str = "--run-config") -> dict[str, Any]:
    """Parse ``--run-config``/``--node-config`` arguments the way Flower's CLI does."""
    if len(args) == 1 and args[0].endswith(".toml"):
        path = Path(args[0]).expanduser()
        try:
            with path.open("rb") as f:
                return flatten(tomllib.load(f))
        except OSError as exc:
            raise CheckError(f"{flag} {args[0]}: cannot read it ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise CheckError(f"{flag} {args[0]}: not valid TOML ({exc})") from None
    parsed: dict[str, Any] = {}
    for arg in args:
        if arg.endswith(".toml"):
            raise CheckError(f"{flag}: a TOML file cannot be passed alongside key=value pairs")
        if rest := _PAIR.sub("", arg).strip():
            raise CheckError(f"{flag}: {rest!r} is not key=value (flwr run would silently ignore it)")
        text = "\n".join(f"{k} = {v}" for k, v in _PAIR.findall(arg))
        try:
            parsed.update(tomllib.loads(text))  # top-level update, as Flower does
        except tomllib.TOMLDecodeError as exc:
            raise CheckError(
                f"{flag} {arg!r} is not 'key=value ...' with TOML values (strings in double "
                f"quotes): {exc}"
            ) from None
    return flatten(parsed)


def unknown_keys(overrides: dict[str, Any]) -> list[str]:
    """Override keys pyproject does not define, each with its closest known key."""
    known = pyproject_defaults()
    problems = []
    for key in sorted(set(overrides) - set(known)):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown key {key!r}{hint}")
    return problems


def simulated_nodes(num_supernodes: int) -> list[str]:
    """The node configs a simulation with ``num_supernodes`` nodes injects."""
    return [f"partition-id={i} num-partitions={num_supernodes}" for i in range(num_supernodes)]


def check(run_args: list[str], node_args: list[str], *, data: bool = True) -> Verdict:
    """Everything the ServerApp and ClientApps check before round 1; raises in one line."""
    from fedapp.checkpoint import checkpoint_path, load_checkpoint
    from fedapp.results import RESULT_FILES, check_run_dir, run_dir

    overrides = parse_overrides(run_args)
    if bad := unknown_keys(overrides):
        raise CheckError(
            "invalid run config: " + "; ".join(bad) + " (flwr run refuses these with "
            "'Invalid run configuration'; every key is listed in pyproject.toml)"
        )
    run_config = {**pyproject_defaults(), **overrides}
    cfg = load_config(run_config, overrides)
    card_for(cfg)  # the strategy card's checks, as the ServerApp runs them at start-up
    out = run_dir(cfg.output_dir, cfg.run_name)
    path = checkpoint_path(cfg, out)
    check_run_dir(out, resuming=path is not None and path.parent == out, overwrite=cfg.overwrite)
    replaces = path is None and any((out / name).exists() for name in RESULT_FILES)
    if path is not None:
        load_checkpoint(path, cfg)
    if data:
        from fedapp.task.data import load_server_test

        load_server_test(cfg.data, cfg.seed)
    client_cfg = load_config(run_config)  # what every ClientApp resolves from the same config
    for arg in node_args:
        _check_node(client_cfg, parse_overrides([arg], "--node-config"), data=data)
    return Verdict(cfg, out, path, replaces, len(node_args))


def _check_node(cfg: AppConfig, node_config: dict[str, Any], *, data: bool) -> None:
    try:
        node = resolve_node(load_node_config(node_config), cfg)
    except ConfigError as exc:
        raise CheckError(f"node {node_config}: {exc}") from None
    if data:
        from fedapp.task.data import DataError, load_client_data

        try:
            load_client_data(
                cfg.data, cfg.seed, node.partition_id, node.num_partitions, node.data_path
            )
        except DataError as exc:
            raise CheckError(f"node {node_config}: {exc}") from None


def main(
    run_args: list[str], node_args: list[str], *, num_supernodes: int = 0, data: bool = True
) -> int:
    """Print the verdict line; 0 when the run would start, 1 when it would fail."""
    from fedapp.task.data import DataError

    try:
        with warnings.catch_warnings():  # the verdict is one line; partitioners warn at length
            warnings.simplefilter("ignore")
            verdict = check(run_args, [*node_args, *simulated_nodes(num_supernodes)], data=data)
    except (CheckError, ConfigError, DataError) as exc:
        print(f"fedzg check: {exc}")
        return 1
    print(f"fedzg check: {verdict.line()}")
    return 0
