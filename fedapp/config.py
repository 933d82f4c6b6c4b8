"""Run-config and node-config schema.

Flower hands the ServerApp and every ClientApp call the flat run config of
``[tool.flwr.app.config]`` (nested TOML tables arrive as dotted keys such as
``data.alpha``). :func:`load_config` unflattens it and validates it once against
:class:`AppConfig`; any problem becomes one :class:`ConfigError` line that names
the key, the value and what is allowed.

Defaults live only in ``pyproject.toml`` (Flower rejects ``--run-config`` keys
that are not there), so the schema declares no defaults for run-config keys.
This module imports nothing but the standard library and pydantic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

StrategyName = Literal["fedavg", "fedprox", "fedvtc"]
TrainerName = Literal["fo"]
DatasetName = Literal[
    "mnist-offline", "digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "local"
]
PartitionName = Literal["iid", "dirichlet", "pathological"]
ModelName = Literal[
    "fedgen-cnn", "cnn", "mlp", "resnet18", "resnet34", "resnet50",
    "vtc-cnn-0.5", "vtc-cnn-1", "vtc-cnn-1.5", "vtc-cnn-2",
]
OptimizerName = Literal["sgd", "adam"]
DeviceName = Literal["auto", "cpu", "cuda"]
FaultName = Literal["none", "nan", "shape", "raise"]

#: Which trainers each strategy can drive; checked once the config is parsed.
ACCEPTS: dict[str, frozenset[str]] = {
    "fedavg": frozenset({"fo"}),
    "fedprox": frozenset({"fo"}),
    "fedvtc": frozenset({"fo"}),
}


class ConfigError(ValueError):
    """A run or node config that cannot be used; the message is one line."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Section(BaseModel):
    """Base of every config section: kebab-case keys, unknown keys rejected, frozen."""

    model_config = ConfigDict(
        alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True
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
    local_test_size: float = Field(ge=0, lt=1)  # per-client local test split
    cache_dir: str  # "" -> $XDG_CACHE_HOME/fedzg


class ModelConfig(Section):
    name: ModelName


class ClientConfig(Section):
    trainer: TrainerName
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

    @model_validator(mode="after")
    def _fault_ids(self) -> Self:
        parse_id_list(self.fault_partitions)
        return self

    def faulty(self, partition_id: int) -> bool:
        """Whether this partition injects :attr:`fault` into its replies."""
        return self.fault != "none" and partition_id in parse_id_list(self.fault_partitions)


class FedProxConfig(Section):
    mu: float = Field(ge=0)  # proximal weight; client adds mu/2 * ||w - w_global||^2


class FedVTCConfig(Section):
    """FedVTC, our reading of the paper (SPEC §5.2-5.4; Niu, Dong, Qin, arXiv 2508.01669)."""

    latent_dim: int = Field(gt=0)  # p: every classifier's projection size
    zoo: str  # comma-separated models dealt round-robin by partition id ("" = model.name)
    share_decoder: bool  # V2: FedAvg the decoder ψ across clients (false: statistics only)
    finetune: Literal["every_round", "final_only"]  # V4: when synthetic fine-tuning runs
    mix_real: bool  # V4: fine-tune on real + synthetic (false: synthetic only)
    cov: Literal["diag"]  # V5: dispersion shared per class (full covariance not implemented)
    dm: Literal["mean", "cycle", "mmd"]  # V6: distribution-matching loss of the decoder
    lambda_kl: float = Field(ge=0)  # λ_KL, classifier's pull towards the global class means
    lambda_dm: float = Field(ge=0)  # λ_DM
    lambda_syn: float = Field(ge=0)  # λ_syn, weight of the synthetic CE in fine-tuning
    delta: float = Field(gt=0)  # δ in (z - c)² / (2σ² + δ)
    decoder_lr: float = Field(gt=0)  # Adam
    decoder_epochs: int = Field(ge=1)  # epochs of local data per decoder phase
    synthetic_batch: int = Field(gt=0)  # synthetic samples per fine-tuning step
    finetune_steps: int = Field(ge=0)  # 0 = one pass of the local data (ceil(n / B) steps)
    max_grad_norm: float = Field(ge=0)  # clip classifier gradients (steps 1, 5); 0 = off

    @model_validator(mode="after")
    def _zoo_names(self) -> Self:
        allowed = set(get_args(ModelName))
        unknown = [m for m in self.zoo_models() if m not in allowed]
        if unknown:
            raise ValueError(f"unknown models {unknown} in zoo (allowed: {sorted(allowed)})")
        return self

    def zoo_models(self) -> list[str]:
        """The zoo as a list (empty: every node uses ``model.name`` or its node-config)."""
        return [m.strip() for m in self.zoo.split(",") if m.strip()]


class AppConfig(Section):
    strategy: StrategyName
    num_server_rounds: int = Field(ge=1)
    seed: int = Field(ge=0, lt=2**32)
    run_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: str = Field(min_length=1)
    round_timeout: float = Field(gt=0)  # seconds to wait for replies in one phase
    server: ServerConfig
    data: DataConfig
    model: ModelConfig
    client: ClientConfig
    fedprox: FedProxConfig
    fedvtc: FedVTCConfig

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.client.trainer not in ACCEPTS[self.strategy]:
            allowed = ", ".join(sorted(ACCEPTS[self.strategy]))
            raise ValueError(
                f"strategy {self.strategy!r} cannot use client.trainer "
                f"{self.client.trainer!r} (allowed: {allowed})"
            )
        if self.server.fraction_evaluate > 0 and self.data.local_test_size == 0:
            raise ValueError(
                "server.fraction-evaluate > 0 needs data.local-test-size > 0 "
                "(clients evaluate on their local test split)"
            )
        if self.strategy == "fedvtc" and self.data.local_test_size == 0:
            raise ValueError("strategy 'fedvtc' needs data.local-test-size > 0 "
                             "(clients report accuracy on their local test split)")
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
            problems.append(f"{key} = {err['input']!r} is invalid: {msg}")
        else:
            problems.append(err["msg"].removeprefix("Value error, "))
    return ConfigError(f"invalid {what}: " + "; ".join(problems))


def load_config(run_config: Mapping[str, Any]) -> AppConfig:
    """Validate Flower's flat run config; raise :class:`ConfigError` in one line."""
    try:
        return AppConfig.model_validate(unflatten(run_config))
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
