"""Run-config and node-config schema.

Flower hands the ServerApp and every ClientApp call the flat run config of
``[tool.flwr.app.config]`` (nested TOML tables arrive as dotted keys such as
``data.alpha``). :func:`load_config` unflattens it and validates it once against
:class:`AppConfig`; any problem becomes one :class:`ConfigError` line that names
the key, the value and what is allowed.

Defaults live only in ``pyproject.toml`` (Flower rejects ``--run-config`` keys
that are not there), so the schema declares no defaults for run-config keys.
Types are strict: Flower delivers TOML values typed (bool, int, float, str), so a
quoted ``num-server-rounds="2"`` is a string and refused, never coerced; an int is
accepted where a float is expected.

``preset = "<name>"`` is resolved first (:mod:`fedapp.defaults`). This module
imports nothing but the standard library, pydantic and :mod:`fedapp.defaults`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any, Self, get_args

from pydantic import BaseModel, Field, ValidationError
from pydantic import field_validator, model_validator

from fedapp.defaults import PresetError, apply_preset, client_divergence

from fedapp.sections import (  # noqa: F401  (re-exported: the schema's public names)
    ConfigError,
    DatasetName,
    DeviceName,
    FaultName,
    FedGenConfig,
    FedProxConfig,
    FedVTCConfig,
    FedZGEConfig,
    HeronConfig,
    ModelName,
    OptimizerName,
    PartitionName,
    Section,
    _kebab,
    StrategyName,
    TimeoutsConfig,
    TrainerChoice,
    TrainerName,
    ZOConfig,
    ZODirectionName,
    ZOEstimatorName,
    ZOSeedSource,
)


class ServerConfig(Section):
    fraction_train: float = Field(gt=0, le=1)  # share of connected nodes sampled to train
    fraction_evaluate: float = Field(ge=0, le=1)  # 0 skips client-side evaluation
    min_available_nodes: int = Field(ge=1)
    eval_batch_size: int = Field(gt=0)


class DataConfig(Section):
    dataset: DatasetName
    path: str  # "local": parquet file or image folder partitioned across nodes
    test_path: str  # "local": the server's held-out test set (parquet or image folder)
    num_classes: int = Field(ge=0)  # "local": number of classes; 0 infers max(label) + 1
    partition: PartitionName
    alpha: float = Field(gt=0)  # Dirichlet concentration; smaller is more skewed
    min_partition_size: int = Field(ge=0)
    classes_per_client: int = Field(ge=1)  # pathological partition
    global_test_size: float = Field(gt=0, lt=1)  # held out before partitioning (offline data)
    val_size: float = Field(ge=0, lt=1)  # server validation split, also held out (offline, local)
    local_test_size: float = Field(ge=0, lt=1)  # per-client local test split
    cache_dir: str  # "" -> $XDG_CACHE_HOME/fedzg


def parse_model_map(text: str) -> dict[int, str] | list[str]:
    """``"0:cnn,1:mlp"`` -> {0: "cnn", 1: "mlp"}; ``"cnn,mlp"`` -> ["cnn", "mlp"] (round-robin)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    ids = [p.partition(":")[0].strip() if ":" in p else None for p in parts]
    models = [p.partition(":")[2].strip() if ":" in p else p for p in parts]
    allowed = set(get_args(ModelName))
    if bad := [m for m in models if m not in allowed]:
        raise ValueError(f"unknown model(s) {bad}; allowed: {', '.join(sorted(allowed))}")
    if all(i is None for i in ids):
        return models
    if not all(i is not None and i.isdigit() for i in ids):
        raise ValueError(f"expected 'id:model,...' or 'model,...', got {text!r}")
    return {int(i): m for i, m in zip(ids, models, strict=True) if i is not None}


class ModelConfig(Section):
    name: ModelName  # the global model; each client's too unless `clients` or node-config say
    clients: str  # client architectures: "0:cnn,1:mlp" by partition id or "cnn,mlp" round-robin

    @field_validator("clients")
    @classmethod
    def _clients(cls, value: str) -> str:
        parse_model_map(value)
        return value

    def for_partition(self, partition_id: int) -> str:
        """This partition's architecture: :attr:`clients` if it names one, else :attr:`name`."""
        mapping = parse_model_map(self.clients)
        if isinstance(mapping, list):
            return mapping[partition_id % len(mapping)] if mapping else self.name
        return mapping.get(partition_id, self.name)


class ClientConfig(Section):
    trainer: TrainerChoice
    zo_fraction: float = Field(ge=0, le=1)  # mixed: share of partitions (lowest ids) that run zo
    optimizer: OptimizerName
    lr: float = Field(gt=0)
    lr_decay: float = Field(gt=0, le=1)  # lr_t = lr * lr_decay^(t-1)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    local_epochs: int = Field(ge=1)
    local_steps: int = Field(ge=0)  # > 0 replaces epochs by this many minibatch steps
    batch_size: int = Field(gt=0)
    num_threads: int = Field(ge=1)  # torch.set_num_threads per ClientApp call
    device: DeviceName
    fault: FaultName  # fault injection for robustness tests; "none" in real runs
    fault_partitions: str  # comma-separated partition ids that inject `fault`

    @field_validator("fault_partitions")
    @classmethod
    def _fault_ids(cls, value: str) -> str:
        parse_id_list(value)
        return value

    def faulty(self, partition_id: int) -> bool:
        """Whether this partition injects :attr:`fault` into its replies."""
        return self.fault != "none" and partition_id in parse_id_list(self.fault_partitions)


_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


class AppConfig(Section):
    strategy: StrategyName
    num_server_rounds: int = Field(ge=1)
    seed: int = Field(ge=0, lt=2**32)
    run_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")  # not "." or ".."
    output_dir: str = Field(min_length=1)
    round_timeout: float = Field(gt=0)  # seconds to wait for replies in one phase
    resume: bool | str  # true: continue <output-dir>/<run-name>; a path: that checkpoint
    overwrite: bool  # replace an existing run's results in <output-dir>/<run-name>
    preset: str  # "": none; a name in fedapp/presets/, laid under the user's overrides
    strategy_card: bool  # lay the strategy's recommended values (fedapp/cards/) under the user's
    server: ServerConfig
    data: DataConfig
    model: ModelConfig
    client: ClientConfig
    fedprox: FedProxConfig
    timeouts: TimeoutsConfig
    zo: ZOConfig
    fedgen: FedGenConfig
    heron: HeronConfig
    fedzge: FedZGEConfig
    fedvtc: FedVTCConfig

    @field_validator("run_name")
    @classmethod
    def _inside_output_dir(cls, value: str) -> str:
        if set(value) == {"."}:
            raise ValueError("a name of dots only would write outside output-dir")
        return value

    @field_validator("resume")
    @classmethod
    def _resume_flag_not_string(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
            raise ValueError(
                "a string is a checkpoint path; use the boolean true (resume=true, unquoted) "
                "to continue <output-dir>/<run-name>, or a path"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """Rules across sections; a strategy's own rules are on its card (``strategies``)."""
        if self.server.fraction_evaluate > 0 and self.data.local_test_size == 0:
            raise ValueError(
                "server.fraction-evaluate > 0 needs data.local-test-size > 0 "
                "(clients evaluate on their local test split)"
            )
        if self.data.val_size > 0 and self.data.dataset not in ("mnist-offline", "digits", "local"):
            raise ValueError(
                f"data.val-size = {self.data.val_size} needs offline or local data "
                f"(a validation split of hub dataset {self.data.dataset!r} is not implemented)"
            )
        if self.data.dataset == "local" and not (self.data.path or self.data.test_path):
            raise ValueError(
                "data.dataset = 'local' needs data.path (data to partition) or "
                "data.test-path (the server's test set); nodes may set data-path"
            )
        return self


class NodeConfig(Section):
    """Per-node facts from ``--node-config`` (deployment) or injected by simulation."""

    partition_id: int = Field(ge=0)
    num_partitions: int = Field(ge=1)
    trainer: TrainerName | None = None
    model: ModelName | None = None
    device: DeviceName | None = None
    data_path: str | None = None  # this node's own data; used whole, not partitioned

    @model_validator(mode="after")
    def _id_in_range(self) -> Self:
        if self.partition_id >= self.num_partitions:
            raise ValueError(
                f"partition-id {self.partition_id} must be < num-partitions {self.num_partitions}"
            )
        return self


def parse_id_list(text: str) -> frozenset[int]:
    """Parse ``"0, 3,4"`` into ``{0, 3, 4}``; the empty string is the empty set."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"expected comma-separated non-negative integers, got {text!r}")
    return frozenset(int(p) for p in parts)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Turn Flower's dotted keys (``data.alpha``) back into nested dicts."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"run config: key {key!r} clashes with scalar key {part!r}")
            node = child
        node[leaf] = value
    return nested


def _allowed(model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    """Describe the keys a section allows, for unknown-key errors."""
    fields = model.model_fields
    for part in loc[:-1]:
        name = str(part).replace("-", "_")
        if name not in fields:
            break
        annotation = fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        fields = annotation.model_fields
    return ", ".join(sorted(_kebab(n) for n in fields))


def _one_line(exc: ValidationError, model: type[BaseModel], what: str) -> ConfigError:
    """Condense pydantic's report into one line per problem, joined with '; '."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            problems.append(
                f"unknown key {key!r} (allowed here: {_allowed(model, err['loc'])})"
            )
        elif err["type"] == "missing":
            problems.append(f"missing key {key!r}")
        elif err["loc"]:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"].endswith("_type"):  # strict: a TOML value of the wrong type
                msg += f" (got {type(err['input']).__name__}{_unquote_hint(key, err['input'])})"
            problems.append(f"{key} = {err['input']!r} is invalid: {msg}")
        else:
            problems.append(err["msg"].removeprefix("Value error, "))
    return ConfigError(f"invalid {what}: " + "; ".join(problems))


def _unquote_hint(key: str, value: Any) -> str:
    """For ``"2"`` or ``"true"`` given as strings: how to write the TOML value unquoted."""
    if not isinstance(value, str):
        return ""
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return ""
    return "" if isinstance(parsed, str) else f"; TOML quotes make a string: write {key}={value}"


def load_config(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> AppConfig:
    """Validate Flower's flat run config, its preset applied; raise :class:`ConfigError` in one line.

    ``overrides`` (the submitted keys; the ServerApp and ``check`` know them) resolves a
    preset exactly and refuses the values the ClientApps would resolve differently.
    """
    try:
        resolved = apply_preset(run_config, overrides)
        diverging = client_divergence(run_config, overrides) if overrides is not None else []
    except PresetError as exc:
        raise ConfigError(f"invalid run config: {exc}") from None
    if diverging:
        raise ConfigError("invalid run config: " + "; ".join(diverging))
    try:
        return AppConfig.model_validate(unflatten(resolved))
    except ValidationError as exc:
        raise _one_line(exc, AppConfig, "run config") from None


def load_node_config(node_config: Mapping[str, Any]) -> NodeConfig:
    """Validate a node's ``--node-config`` (or the simulation's injected one)."""
    try:
        return NodeConfig.model_validate(dict(node_config))
    except ValidationError as exc:
        raise _one_line(exc, NodeConfig, "node config") from None


def literal_values(alias: Any) -> tuple[str, ...]:
    """The members of a ``Literal`` alias (used to check registries against the schema)."""
    return tuple(get_args(alias))
