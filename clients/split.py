"""Split trainers: the client side of HERON-SFL (``split-zo``) and CSE-FSL (``split-fo``).

HERON-SFL: Kou, Chen, Yang, Shen, "Lean Clients, Full Accuracy: Hybrid Zeroth- and First-Order
Split Federated Learning", arXiv 2601.09076 (v1), §IV (docs/strategies/heron-sfl.md). CSE-FSL:
Mu and Shen, "Communication and Storage Efficient Federated Split Learning" (ICC 2023); the FO
baseline of the paper (srijith1996/FSL-SAGE).

Both trainers take the client's front-end θ_c and auxiliary head θ_a, run h local
steps on the auxiliary loss f_l = CE(a(c(x; θ_c); θ_a), y) and, every k steps
(steps 0, k, 2k, ...: ⌈h/k⌉ uploads), keep the cut activations c(x; θ_c) and
labels of the current batch for the server. Nothing flows back from the server
but the next round's θ_c, θ_a: no gradients.

- ``split-zo`` (HERON-SFL): forward-only. Each step perturbs θ_l = {θ_c, θ_a}
  in place along P seeded directions (:mod:`fedapp.task.zo`), and feeds the
  estimate ĝ = (c/P) Σ_p g_p v_p tensor by tensor to Adam (or SGD). With the
  ``forward`` estimator the clean forward also yields the uploaded activations.
- ``split-fo`` (CSE-FSL): the same loop with backpropagation and torch's Adam.

One step after a warm-up step (the second, or the only one) is measured for
FLOPs and peak memory with :func:`fedapp.task.metering.step_cost`, the same
way for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from clients.base import FitPlan, FitStats, measured
from fedapp.task.data import Arrays
from fedapp.task.metering import Meter, StepCost, step_cost, tensor_mb
from fedapp.task.seeding import derive_seed
from fedapp.task.zo import Direction, Estimator, estimate_, estimate_tensors, frozen_bn_stats
from fedapp.task.zo_optim import TensorAdam, TensorSGD

#: The local objective on θ_l: (local = front then aux, x (B, ...), y (B,)) -> scalar loss.
LocalLossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def aux_cross_entropy(local: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """f_l = CE(a(c(x)), y), reduced in float64: ZO loss differences are tiny.

    docs/zeroth-order.md (Consistency inside one estimate).
    """
    logits = local(x)  # (B, C)
    return nn.functional.cross_entropy(logits.double(), y)


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """One round of local split training, as the server and the run config ask for it."""

    server_round: int
    local_steps: int  # h; 0: one pass over the local data
    upload_every: int  # k
    batch_size: int  # B
    lr: float  # η_l
    optimizer: str  # "adam" | "sgd"
    data_seed: int  # minibatch order
    direction_seed: int  # base of this round's ZO direction seeds (split-zo)
    directions: int = 1  # P (split-zo)
    smoothing: float = 1e-3  # μ (split-zo)
    direction: Direction = "sphere"  # split-zo
    estimator: Estimator = "forward"  # split-zo
    bn: str = "batchstats"  # split-zo: "batchstats" | "eval"


@dataclass(frozen=True, slots=True)
class SplitResult:
    """What a split update returns: its stats, the uploads and one measured step."""

    stats: FitStats
    acts: Tensor  # (N, *cut): the uploaded batches' cut activations, concatenated, detached
    labels: Tensor  # (N,) int64
    batch_sizes: list[int]  # U batch sizes summing to N
    steps: int  # local steps taken (h)
    step: StepCost  # FLOPs and peak memory of one local step


class SplitTrainer(Protocol):
    """A local-update rule on split parts; registered in :data:`clients.TRAINERS`."""

    def fit_split(
        self, front: nn.Module, aux: nn.Module, data: Arrays, plan: SplitPlan,
        device: torch.device, loss_fn: LocalLossFn = aux_cross_entropy,
    ) -> SplitResult:
        ...


@dataclass
class _Uploads:
    """Cut activations captured by a forward hook on the front, when armed."""

    armed: bool = False
    acts: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)

    def hook(self, module: nn.Module, inputs: object, output: Tensor) -> None:
        if self.armed:
            self.acts.append(output.detach().cpu())
            self.armed = False

    def label(self, y: Tensor) -> None:
        self.labels.append(y.detach().cpu())


StepBody = Callable[[int, Tensor, Tensor, _Uploads], float]


def _run(
    front: nn.Module, aux: nn.Module, data: Arrays, plan: SplitPlan, device: torch.device,
    body: StepBody, meter: Meter, resident: Callable[[], float],
) -> SplitResult:
    """The shared split loop: h steps of ``body``, uploads every k, one measured step."""
    uploads, costs = _Uploads(), []
    handle = front.register_forward_hook(uploads.hook)
    steps = plan.local_steps or -(-len(data) // plan.batch_size)
    measure_at = min(1, steps - 1)
    index = 0

    def step(x: Tensor, y: Tensor) -> float:
        nonlocal index
        i, index = index, index + 1
        if i % plan.upload_every == 0:
            uploads.armed = True
            uploads.label(y)
        if i != measure_at:
            return body(i, x, y, uploads)
        out: list[float] = []
        costs.append(step_cost(lambda: out.append(body(i, x, y, uploads)), device,
                               resident() + tensor_mb([x, y])))
        return out[0]

    loop_plan = FitPlan(
        server_round=plan.server_round, lr=plan.lr, local_epochs=1, local_steps=steps,
        batch_size=plan.batch_size, optimizer=plan.optimizer, momentum=0.0, weight_decay=0.0,
        proximal_mu=0.0, data_seed=plan.data_seed,
    )
    try:
        stats = measured(data, loop_plan, device, step, meter)
    finally:
        handle.remove()
    return SplitResult(
        stats=stats,
        acts=torch.cat(uploads.acts),
        labels=torch.cat(uploads.labels),
        batch_sizes=[len(y) for y in uploads.labels],
        steps=index,
        step=costs[0],
    )


def _state_mb(local: nn.Module, extra: list[Tensor]) -> float:
    """MiB live when a step starts: parameters, buffers, optimizer state (``extra``).

    Gradients of the previous FO step are left out: the step frees them first
    (``zero_grad(set_to_none=True)``), before it allocates anything.
    """
    return tensor_mb([*local.parameters(), *local.buffers(), *extra])


class SplitZerothOrderTrainer:
    """HERON-SFL client: forward-only ZO steps on θ_l = {θ_c, θ_a}.

    docs/strategies/heron-sfl.md (Losses and estimator); decisions H1-H8 on the same page.

    Per step: P seeded directions v_p (``sphere``: z/||z|| jointly over all local
    tensors, factor d = dim θ_l), g_p from the ``forward`` (P+1 forwards) or
    ``central`` (2P forwards) difference at smoothing μ on one minibatch, then
    Adam on ĝ fed tensor by tensor. No autograd graph is ever built.
    """

    def fit_split(
        self, front: nn.Module, aux: nn.Module, data: Arrays, plan: SplitPlan,
        device: torch.device, loss_fn: LocalLossFn = aux_cross_entropy,
    ) -> SplitResult:
        local = nn.Sequential(front, aux).to(device)
        local.train(plan.bn == "batchstats")
        params = [p for p in local.parameters() if p.requires_grad]
        opt = (TensorAdam if plan.optimizer == "adam" else TensorSGD)(params, plan.lr)
        meter = Meter(device)
        passes = plan.directions + 1 if plan.estimator == "forward" else 2 * plan.directions

        @torch.no_grad()
        def body(i: int, x: Tensor, y: Tensor, uploads: _Uploads) -> float:
            if uploads.armed and plan.estimator == "central":
                with frozen_bn_stats(local):  # the central pair has no clean forward
                    front(x)
                meter.forward_passes += 1
            seeds = [derive_seed(plan.direction_seed, i, p) for p in range(plan.directions)]
            grads, loss, pending = estimate_(
                lambda: float(loss_fn(local, x, y)), params, seeds, plan.smoothing,
                plan.estimator, plan.direction, model=local, restore=False,
            )
            # the estimate's pass also undoes the last perturbation, tensor by tensor
            opt.step_(estimate_tensors(params, seeds, grads, plan.direction, pending=pending))
            meter.forward_passes += passes
            return loss

        state = opt.state_tensors()
        return _run(front, aux, data, plan, device, body, meter, lambda: _state_mb(local, state))


class SplitFirstOrderTrainer:
    """CSE-FSL client: the same split loop with backprop and ``torch.optim.Adam`` (or SGD)."""

    def fit_split(
        self, front: nn.Module, aux: nn.Module, data: Arrays, plan: SplitPlan,
        device: torch.device, loss_fn: LocalLossFn = aux_cross_entropy,
    ) -> SplitResult:
        local = nn.Sequential(front, aux).to(device).train()
        params = [p for p in local.parameters() if p.requires_grad]
        opt: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=plan.lr) if plan.optimizer == "adam"
            else torch.optim.SGD(params, lr=plan.lr)
        )
        meter = Meter(device)

        def body(i: int, x: Tensor, y: Tensor, uploads: _Uploads) -> float:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(local, x, y)
            loss.backward()
            opt.step()
            meter.forward_passes += 1
            meter.backward_passes += 1
            return float(loss.detach())

        def resident() -> float:
            state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
            return _state_mb(local, state)

        return _run(front, aux, data, plan, device, body, meter, resident)
