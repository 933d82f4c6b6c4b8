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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

StrategyName = Literal["fedavg", "fedprox", "zo-seed", "fedgen", "heron-sfl", "fedzge", "fedvtc"]
TrainerName = Literal["fo", "zo", "split-zo", "split-fo"]
DatasetName = Literal[
    "mnist-offline", "digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "local"
]
PartitionName = Literal["iid", "dirichlet", "pathological"]
ModelName = Literal[
    "fedgen-cnn", "cnn", "mlp", "resnet18", "resnet34", "resnet50", "resnet18-imagenet",
    "vtc-cnn-0.5", "vtc-cnn-1", "vtc-cnn-1.5", "vtc-cnn-2",
    "fedgen-cnn-gn", "resnet18-gn",  # GroupNorm variants (BN-free FedZGE global models)
]
OptimizerName = Literal["sgd", "adam"]
DeviceName = Literal["auto", "cpu", "cuda"]
FaultName = Literal["none", "nan", "shape", "raise"]
#: ``client.trainer``: a trainer for every node, or ``mixed`` (``client.zo-fraction`` of nodes run ``zo``).
TrainerChoice = TrainerName | Literal["mixed"]
ZOEstimatorName = Literal["central", "forward"]
ZODirectionName = Literal["gaussian", "sphere"]
ZOSeedSource = Literal["shared", "client"]

#: Which trainers each strategy can drive; checked once the config is parsed.
ACCEPTS: dict[str, frozenset[str]] = {
    "fedavg": frozenset({"fo", "zo", "mixed"}),
    "fedprox": frozenset({"fo", "zo", "mixed"}),
    "zo-seed": frozenset({"zo"}),
    "fedgen": frozenset({"fo", "zo", "mixed"}),
    "heron-sfl": frozenset({"split-zo", "split-fo"}),
    "fedzge": frozenset({"fo"}),
    "fedvtc": frozenset({"fo"}),
}

#: Strategies whose clients may run architectures of their own (``model.clients``, node-config).
HETEROGENEOUS = frozenset({"fedzge", "fedvtc"})


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

    @model_validator(mode="after")
    def _fault_ids(self) -> Self:
        parse_id_list(self.fault_partitions)
        return self

    def faulty(self, partition_id: int) -> bool:
        """Whether this partition injects :attr:`fault` into its replies."""
        return self.fault != "none" and partition_id in parse_id_list(self.fault_partitions)


class FedProxConfig(Section):
    mu: float = Field(ge=0)  # proximal weight; client adds mu/2 * ||w - w_global||^2


class TimeoutsConfig(Section):
    """Liveness bounds (deployment): how long the server waits for nodes and replies."""

    train: float = Field(ge=0)  # seconds for `train*` replies; 0 uses round-timeout
    evaluate: float = Field(ge=0)  # seconds for `evaluate*` replies; 0 uses round-timeout
    query: float = Field(ge=0)  # seconds for `query*` replies; 0 uses round-timeout
    min_nodes: float = Field(gt=0)  # seconds to wait for server.min-available-nodes, then fail

    def for_phase(self, category: str, default: float) -> float:
        """The reply timeout of a message category (``train``, ``evaluate``, ``query``)."""
        value = {"train": self.train, "evaluate": self.evaluate, "query": self.query}.get(
            category, 0.0
        )
        return value or default


class ZOConfig(Section):
    """Zeroth-order clients (SPEC §1, §6): MeZO-style seeded two-point estimates, ZO-SGD."""

    estimator: ZOEstimatorName  # central: 2P forwards/step; forward: P+1
    direction: ZODirectionName  # gaussian (c = 1) or sphere (c = d)
    num_directions: int = Field(ge=1)  # P
    mu: float = Field(gt=0)  # smoothing μ, quoted with its direction family
    lr: float = Field(gt=0)  # η (decays with client.lr-decay)
    momentum: float = Field(ge=0, lt=1)  # local heavy ball; needs a d-sized buffer; not with zo-seed
    weight_decay: float = Field(ge=0)  # λ: θ ← (1 − ηλ)θ, not on biases and norms
    local_steps: int = Field(ge=1)  # H
    exact_restore: bool  # restore θ from a copy after each estimate (bit-exact, +d floats)
    seed_source: ZOSeedSource  # shared: seeds from (run seed, round, h, p); client: + partition id
    catchup_max_rounds: int = Field(ge=0)  # zo-seed: send the model beyond this gap; 0 = never
    sync_buffers: bool  # zo-seed: average BatchNorm running statistics (no parameters)


class FedGenConfig(Section):
    """FedGen (Zhu, Hong, Zhou, ICML 2021); defaults are the official MNIST settings."""

    noise_dim: int = Field(gt=0)  # generator noise eps
    hidden_dim: int = Field(gt=0)  # generator hidden layer
    embedding: bool  # Embedding(C, noise-dim) instead of one-hot labels
    noise: Literal["gaussian", "uniform"]  # G1: N(0, I); official U[0, 1)
    generator_steps: int = Field(ge=1)  # Adam steps per round (official 5 x 10)
    generator_batch_size: int = Field(ge=2)  # B_g (BatchNorm needs 2+)
    generator_lr: float = Field(gt=0)  # ensemble_lr
    generator_weight_decay: float = Field(ge=0)
    generator_lr_decay: float = Field(gt=0, le=1)  # ExponentialLR gamma, once per round
    teacher_weight: float = Field(ge=0)  # alpha_e
    diversity_weight: float = Field(ge=0)  # eta_e
    student_weight: float = Field(ge=0)  # beta_e (adversarial student term; 0 = off)
    alpha0: float = Field(ge=0)  # generative_alpha: CE on generated latents
    beta0: float = Field(ge=0)  # generative_beta: latent KL (G3; 0 disables it)
    regularizer_decay: float = Field(gt=0, le=1)  # alpha_t = max(floor, alpha0 decay^t)
    regularizer_floor: float = Field(ge=0)
    synthetic_batch_size: int = Field(ge=1)  # B_gen: generated latents per client step
    label_counts: Literal["histogram", "round-draws"]  # G2
    available_labels: Literal["from-counts", "all"]  # G6


class HeronConfig(Section):
    """HERON-SFL and its first-order twin CSE-FSL (SPEC §4; decisions H1-H10)."""

    cut_layer: int = Field(ge=0)  # layers in the client front-end θ_c; 0: the model's default
    aux_pool: Literal["flatten", "avg"]  # aux head θ_a: Linear on flattened or pooled acts
    local_steps: int = Field(ge=0)  # h; 0: one pass over the local data
    upload_every: int = Field(ge=1)  # k: smashed data of every k-th local step go up
    batch_size: int = Field(gt=0)  # B of local steps (uploads are batches of this size)
    directions: int = Field(ge=1)  # P directions per ZO step (H3)
    smoothing: float = Field(gt=0)  # μ (H2), quoted with `direction`
    direction: Literal["sphere", "gaussian"]  # H1: sphere (factor d) or Gaussian (no factor)
    estimator: Literal["forward", "central"]  # H4
    bn: Literal["batchstats", "eval"]  # H6: BN mode of the client's ZO forwards
    client_optimizer: Literal["adam", "sgd"]  # H8: on the ZO estimate or the FO gradient
    client_lr: float = Field(gt=0)  # η_l
    server_lr: float = Field(gt=0)  # η_s (Adam on the back-end θ_s)


class FedZGEConfig(Section):
    """FedZGE (SPEC §3): official values in pyproject; Z1..Z5 are SPEC §3.6's decisions."""

    num_directions: int = Field(ge=1)  # q (Z1: README's 5; the official code's default is 10)
    smoothing: float = Field(gt=0)  # ε of x_j = x + ε·u_j
    synthetic_samples: int = Field(ge=2)  # N synthetic images per round
    temperature: float = Field(gt=0)  # T of the KD and adversarial terms
    latent_dim: int = Field(ge=1)  # nz
    generator_width: int = Field(ge=1)  # ngf
    image_range: Literal["tanh", "unit"]  # generator output: [-1, 1] (official) or [0, 1]
    beta_adv: float = Field(ge=0)  # β1
    beta_div: float = Field(ge=0)  # β2
    beta_info: float = Field(ge=0)  # β3
    generator_lr: float = Field(ge=0)  # lr_G; 0 freezes the generator (ablation)
    generator_steps: int = Field(ge=1)  # ZO generator steps per round, each a query phase
    generator_optimizer: Literal["fresh", "persistent"]  # Adam recreated every round (official)
    server_lr: float = Field(gt=0)  # lr_S
    server_steps: int = Field(ge=0)  # E2 full-batch KD steps
    client_lr: float = Field(gt=0)  # lr_k (local training and local KD)
    local_epochs: int = Field(ge=0)  # E1
    batch_size: int = Field(ge=1)  # B of local training
    distill_steps: int = Field(ge=0)  # E3 full-batch local KD steps
    info_term: Literal["own", "official"]  # Z2
    direction_transport: Literal["seed", "tensor"]  # Z3
    exact_diversity: bool  # Z4
    estimator: Literal["batch", "per-sample"]  # one loss difference per batch (official) or sample
    select: Literal["final", "best_on_val"]  # Z5: never a test-selected round
    client_eval: Literal["every", "final", "none"]  # rounds in which clients report accuracy
    answer_bn: Literal["batch", "running"]  # client answers: query-batch BN statistics (official)
    client_kd_bn: Literal["update", "keep"]  # local KD moves BN running statistics (official)
    global_bn: Literal["kd", "synthetic"]  # global BN statistics: left by KD, or re-estimated
    official_eval: bool  # also log the official-style test accuracy (a labelled diagnostic)


class FedVTCConfig(Section):
    """FedVTC, our reading of the paper (SPEC §5.2-5.4; Niu, Dong, Qin, arXiv 2508.01669)."""

    latent_dim: int = Field(gt=0)  # p: every classifier's projection size
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


class AppConfig(Section):
    strategy: StrategyName
    num_server_rounds: int = Field(ge=1)
    seed: int = Field(ge=0, lt=2**32)
    run_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: str = Field(min_length=1)
    round_timeout: float = Field(gt=0)  # seconds to wait for replies in one phase
    resume: bool | str  # true: continue <output-dir>/<run-name>; a path: that checkpoint
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

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.client.trainer not in ACCEPTS[self.strategy]:
            allowed = ", ".join(sorted(ACCEPTS[self.strategy]))
            raise ValueError(
                f"strategy {self.strategy!r} cannot use client.trainer "
                f"{self.client.trainer!r} (allowed: {allowed})"
            )
        if self.strategy == "zo-seed" and self.zo.momentum > 0:
            raise ValueError(
                "zo.momentum must be 0 with strategy 'zo-seed' (replaying (seed, scalar) "
                "pairs cannot rebuild a momentum buffer)"
            )
        if self.server.fraction_evaluate > 0 and self.data.local_test_size == 0:
            raise ValueError(
                "server.fraction-evaluate > 0 needs data.local-test-size > 0 "
                "(clients evaluate on their local test split)"
            )
        if self.model.clients and self.strategy not in HETEROGENEOUS:
            raise ValueError(
                f"model.clients = {self.model.clients!r} gives clients their own architectures, "
                f"which strategy {self.strategy!r} cannot aggregate (allowed with: "
                f"{', '.join(sorted(HETEROGENEOUS))})"
            )
        if self.data.val_size > 0 and self.data.dataset not in ("mnist-offline", "digits", "local"):
            raise ValueError(
                f"data.val-size = {self.data.val_size} needs offline or local data "
                f"(a validation split of hub dataset {self.data.dataset!r} is not implemented)"
            )
        if self.strategy == "fedzge" and self.fedzge.select == "best_on_val" and not (
            self.data.val_size > 0
        ):
            raise ValueError(
                "fedzge.select = 'best_on_val' needs data.val-size > 0 (a validation split "
                "held out of the training data; the test set never selects a round)"
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
