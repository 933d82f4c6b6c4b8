"""The schema's building blocks and the per-method sections of the run config.

:mod:`fedapp.config` assembles these into :class:`~fedapp.config.AppConfig`; every
name here is re-exported there. Like it, this module imports nothing but the
standard library and pydantic.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

StrategyName = Literal["fedavg", "fedprox", "zo-seed", "fedgen", "heron-sfl", "fedzge", "fedvtc"]
TrainerName = Literal["fo", "zo", "split-zo", "split-fo"]
DatasetName = Literal[
    "mnist-offline", "digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "local"
]
PartitionName = Literal["iid", "dirichlet", "pathological"]
ModelName = Literal[
    "fedgen-cnn", "cnn", "mlp", "resnet18", "resnet34", "resnet50", "resnet18-imagenet",
    "resnet18-cifar-cut",
    "vtc-cnn-0.5", "vtc-cnn-1", "vtc-cnn-1.5", "vtc-cnn-2",
    "fedgen-cnn-gn", "resnet18-gn",  # GroupNorm variants (BN-free FedZGE global models)
]
OptimizerName = Literal["sgd", "adam"]
DeviceName = Literal["auto", "cpu", "cuda"]
FaultName = Literal[
    "none", "nan", "inf", "shape", "dtype", "missing-key", "extra-key", "raise", "silent"
]
#: ``client.trainer``: a trainer for every node, or ``mixed`` (``client.zo-fraction`` of nodes run ``zo``).
TrainerChoice = TrainerName | Literal["mixed"]
ZOEstimatorName = Literal["central", "forward"]
ZODirectionName = Literal["gaussian", "sphere"]
ZOSeedSource = Literal["shared", "client"]


class ConfigError(ValueError):
    """A run or node config that cannot be used; the message is one line."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Section(BaseModel):
    """Base of every config section: kebab-case keys, unknown keys rejected, strict, frozen."""

    model_config = ConfigDict(
        alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True, strict=True
    )


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
        values = {"train": self.train, "evaluate": self.evaluate, "query": self.query}
        return values.get(category, 0.0) or default


class ZOConfig(Section):
    """Zeroth-order clients (docs/zeroth-order.md, docs/strategies/zo-seed.md): seeded ZO-SGD."""

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
    # zo-seed: send the model beyond this gap; 0 = never; "auto": when the history's bytes
    # would outweigh the model's
    catchup_max_rounds: Annotated[int, Field(ge=0)] | Literal["auto"]
    sync_buffers: bool  # zo-seed: average BatchNorm running statistics (no parameters)


class FedGenConfig(Section):
    """FedGen (docs/strategies/fedgen.md; decisions G1-G7 there): official MNIST defaults."""

    noise_dim: int = Field(gt=0)  # generator noise eps
    hidden_dim: int = Field(gt=0)  # generator hidden layer
    embedding: bool  # Embedding(C, noise-dim) instead of one-hot labels
    noise: Literal["gaussian", "uniform"]  # decision G1: N(0, I); official U[0, 1)
    generator_steps: int = Field(ge=1)  # Adam steps per round (official 5 x 10)
    generator_batch_size: int = Field(ge=2)  # B_g (BatchNorm needs 2+)
    generator_lr: float = Field(gt=0)  # ensemble_lr
    generator_weight_decay: float = Field(ge=0)
    generator_lr_decay: float = Field(gt=0, le=1)  # ExponentialLR gamma, once per round
    teacher_weight: float = Field(ge=0)  # alpha_e
    diversity_weight: float = Field(ge=0)  # eta_e
    student_weight: float = Field(ge=0)  # beta_e (adversarial student term; 0 = off)
    alpha0: float = Field(ge=0)  # generative_alpha: CE on generated latents
    beta0: float = Field(ge=0)  # generative_beta: latent KL (decision G3; 0: off)
    regularizer_decay: float = Field(gt=0, le=1)  # alpha_t = max(floor, alpha0 decay^t)
    regularizer_floor: float = Field(ge=0)
    synthetic_batch_size: int = Field(ge=1)  # B_gen: generated latents per client step
    label_counts: Literal["histogram", "round-draws"]  # decision G2
    available_labels: Literal["from-counts", "all"]  # decision G6
    weight_scale: Literal["step", "official"]  # decision G8: alpha_t, beta_t per client step


class HeronConfig(Section):
    """HERON-SFL and CSE-FSL (docs/strategies/heron-sfl.md; decisions H1-H10 there)."""

    cut_layer: int = Field(ge=0)  # layers in the client front-end θ_c; 0: the model's default
    aux_pool: Literal["flatten", "avg"]  # aux head θ_a: Linear on flattened or pooled acts
    local_steps: int = Field(ge=0)  # h; 0: one pass over the local data
    upload_every: int = Field(ge=1)  # k: smashed data of every k-th local step go up
    batch_size: int = Field(gt=0)  # B of local steps (uploads are batches of this size)
    directions: int = Field(ge=1)  # P directions per ZO step (decision H3)
    smoothing: float = Field(gt=0)  # μ (decision H2), quoted with `direction`
    direction: Literal["sphere", "gaussian"]  # decision H1: sphere (factor d) or Gaussian
    estimator: Literal["forward", "central"]  # decision H4
    bn: Literal["batchstats", "eval"]  # decision H6: BN mode of the ZO forwards
    client_optimizer: Literal["adam", "sgd"]  # decision H8: on the ZO estimate or FO gradient
    client_lr: float = Field(gt=0)  # η_l
    server_lr: float = Field(gt=0)  # η_s (Adam on the back-end θ_s)


class FedZGEConfig(Section):
    """FedZGE (docs/strategies/fedzge.md): official values in pyproject; decisions Z1-Z5 there."""

    num_directions: int = Field(ge=1)  # q (decision Z1: README's 5; official code's 10)
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
    info_term: Literal["own", "official"]  # decision Z2
    direction_transport: Literal["seed", "tensor"]  # decision Z3
    exact_diversity: bool  # decision Z4
    estimator: Literal["batch", "per-sample"]  # one loss difference per batch (official) or sample
    select: Literal["final", "best_on_val"]  # decision Z5: never a test-selected round
    client_eval: Literal["every", "final", "none"]  # rounds in which clients report accuracy
    answer_bn: Literal["batch", "running"]  # client answers: query-batch BN statistics (official)
    client_kd_bn: Literal["update", "keep"]  # local KD moves BN running statistics (official)
    global_bn: Literal["kd", "synthetic"]  # global BN statistics: left by KD, or re-estimated
    official_eval: bool  # also log the official-style test accuracy (a labelled diagnostic)


class FedVTCConfig(Section):
    """FedVTC, our reading of the paper (docs/strategies/fedvtc.md; decisions V1-V6 there)."""

    latent_dim: int = Field(gt=0)  # p: every classifier's projection size
    share_decoder: bool  # decision V2: FedAvg ψ across clients (false: statistics only)
    finetune: Literal["every_round", "final_only"]  # decision V4: when synthetic fine-tuning runs
    mix_real: bool  # decision V4: real + synthetic (false: synthetic only)
    cov: Literal["diag"]  # decision V5: per-class diagonal (no full covariance)
    dm: Literal["mean", "cycle", "mmd"]  # decision V6: the decoder's distribution matching
    lambda_kl: float = Field(ge=0)  # λ_KL, classifier's pull towards the global class means
    lambda_dm: float = Field(ge=0)  # λ_DM
    lambda_syn: float = Field(ge=0)  # λ_syn, weight of the synthetic CE in fine-tuning
    delta: float = Field(gt=0)  # δ in (z - c)² / (2σ² + δ)
    decoder_lr: float = Field(gt=0)  # Adam
    decoder_epochs: int = Field(ge=1)  # epochs of local data per decoder phase
    synthetic_batch: int = Field(gt=0)  # synthetic samples per fine-tuning step
    finetune_steps: int = Field(ge=0)  # 0 = one pass of the local data (ceil(n / B) steps)
    max_grad_norm: float = Field(ge=0)  # clip classifier gradients (steps 1, 5); 0 = off
