"""The run config's layers: defaults, strategy cards, presets, the user's overrides.

From lowest to highest: ``pyproject.toml``; the strategy's card
(``fedapp/cards/<strategy>.toml``, the recommended values a strategy chosen by
name runs with); ``preset = "<name>"`` (``fedapp/presets/<name>.toml``); the
user's overrides. The card's file is data, not code, so the ClientApps (which
cannot import :mod:`strategies`) resolve the same values as the ServerApp. Flower fuses every pyproject default into ``context.run_config`` and
tells a ClientApp nothing else, so a ClientApp counts a key as *set by the user*
when its value differs from the pyproject default (same type and value): an
override equal to its default is taken as unset and gets the preset's (or card's) value.

The ServerApp knows better: Flower's ``Run`` carries the submitted overrides
(``grid.run.override_config``), and ``python -m fedapp check`` parses them itself.
With them, :func:`apply_preset` is exact, and :func:`client_divergence` lists
the keys on which the clients' default-comparing view would differ from it.
Keys no ClientApp reads (:func:`server_side_keys`) may differ; any other
divergence refuses the run, so server and clients never run different values.

Standard library only: the schema (:mod:`fedapp.config`) imports this module.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The app's own pyproject.toml (next to the package in a source tree and in an installed FAB).
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
CARDS_DIR = Path(__file__).resolve().parent / "cards"


class PresetError(ValueError):
    """A preset or the defaults cannot be used; the message is one line."""


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> Flower's dotted keys (``{"data": {"alpha": 1}}`` -> ``data.alpha``)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@functools.cache
def pyproject_defaults() -> dict[str, Any]:
    """The flat ``[tool.flwr.app.config]`` that Flower fuses every run's overrides into."""
    try:
        with PYPROJECT.open("rb") as f:
            return flatten(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise PresetError(f"cannot read the run-config defaults in {PYPROJECT} ({exc!r})") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def read_preset(name: str) -> dict[str, Any]:
    """The flat keys of ``fedapp/presets/<name>.toml``, checked against pyproject's keys."""
    if name not in preset_names():
        raise PresetError(
            f"preset = {name!r} is invalid: no such preset (available: {', '.join(preset_names())})"
        )
    with (PRESETS_DIR / f"{name}.toml").open("rb") as f:
        values = flatten(tomllib.load(f))
    defaults = pyproject_defaults()
    if bad := sorted(k for k in values if k not in defaults or k == "preset"):
        raise PresetError(f"preset {name!r} sets key(s) {bad} that pyproject.toml does not define")
    return values


def _same(a: Any, b: Any) -> bool:
    """Equal in type and value (``1``, ``1.0`` and ``true`` are three different TOML values)."""
    return type(a) is type(b) and a == b


def _preset_name(run_config: Mapping[str, Any]) -> str:
    name = run_config.get("preset", "")
    return name if isinstance(name, str) else ""  # a non-string preset is the schema's to report


def card_values(strategy: str) -> dict[str, Any]:
    """The recommended values of ``strategy``'s card (``fedapp/cards/<strategy>.toml``).

    A strategy without a file recommends nothing; the keys are checked against pyproject's.
    """
    path = CARDS_DIR / f"{strategy}.toml"
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        values = flatten(tomllib.load(f))
    defaults = pyproject_defaults()
    if bad := sorted(k for k in values if k not in defaults
                     or k in ("preset", "strategy", "strategy-card")):
        raise PresetError(f"card {strategy!r} sets key(s) {bad} that it may not set")
    return values


def _layers(preset: str, strategy: Any) -> list[tuple[str, dict[str, Any]]]:
    """The layers under the user's keys, highest first: the preset, then the strategy's card."""
    layers = [(f"preset:{preset}", read_preset(preset))] if preset else []
    if isinstance(strategy, str):
        layers.append((f"card:{strategy}", card_values(strategy)))
    return layers


def resolve_layers(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """``run_config`` with preset and card values on every key the user did not set, and sources.

    With ``overrides`` (the submitted keys) "set" is exact; without, a key is unset
    while it equals its pyproject default, which is all a ClientApp can know. The
    second value maps each key taken from a layer to ``"preset:<name>"`` or
    ``"card:<strategy>"``.
    """
    resolved = dict(run_config)
    sources: dict[str, str] = {}
    defaults = pyproject_defaults()

    def unset(key: str) -> bool:
        if overrides is not None:
            return key not in overrides
        return _same(run_config.get(key, defaults[key]), defaults[key])

    if (name := _preset_name(run_config)) and unset("strategy"):
        preset_strategy = read_preset(name).get("strategy")
        if preset_strategy is not None:
            resolved["strategy"] = preset_strategy
    strategy = resolved.get("strategy") if run_config.get("strategy-card", True) is True else None
    for source, values in _layers(name, strategy):
        for key, value in values.items():
            if key not in sources and unset(key):
                resolved[key], sources[key] = value, source
    return resolved, sources


def apply_preset(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``run_config`` with its preset's and its strategy card's values on every key not set."""
    return resolve_layers(run_config, overrides)[0]


#: Keys no ClientApp reads: the ServerApp may resolve them differently from its clients.
SERVER_SIDE_KEYS = frozenset({
    "num-server-rounds", "run-name", "output-dir", "round-timeout", "resume", "overwrite",
    "server.fraction-train", "server.fraction-evaluate", "server.min-available-nodes",
    "timeouts.train", "timeouts.evaluate", "timeouts.query", "timeouts.min-nodes",
})


def server_side_keys(resolved: Mapping[str, Any]) -> frozenset[str]:
    """:data:`SERVER_SIDE_KEYS` for this config (FedZGE clients evaluate in the final round)."""
    if resolved.get("strategy") == "fedzge" and resolved.get("fedzge.client-eval") == "final":
        return SERVER_SIDE_KEYS - {"num-server-rounds"}
    return SERVER_SIDE_KEYS


def client_divergence(run_config: Mapping[str, Any], overrides: Mapping[str, Any]) -> list[str]:
    """One message per key a ClientApp would resolve differently from the exact resolution."""
    exact, _ = resolve_layers(run_config, overrides)
    clients, sources = resolve_layers(run_config)
    return [
        f"{key} = {exact[key]!r} equals its pyproject default, which the ClientApps cannot tell "
        f"apart from not setting it, so they would take {clients[key]!r} from "
        f"{sources[key].replace(':', ' ', 1)}; to keep it, take a value other than the default, "
        "or for a card set strategy-card=false, or for a preset copy its file, set the key "
        "there and pass the file instead of preset"
        for key in sorted(exact)
        if not _same(exact[key], clients.get(key)) and key not in server_side_keys(exact)
        and key in sources
    ]
