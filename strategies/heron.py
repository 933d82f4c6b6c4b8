"""HERON-SFL: split federated learning with zeroth-order clients and a first-order server.

Paper: Kou, Chen, Yang, Shen, "Lean Clients, Full Accuracy: Hybrid Zeroth- and First-Order Split
Federated Learning", arXiv 2601.09076 (v1), §IV (docs/strategies/heron-sfl.md). No public code
exists; this follows the paper's round structure, with the project decisions H1-H10 of
docs/strategies/heron-sfl.md (Project decisions) as ``heron.*`` config keys. With the
``split-fo`` trainer the same server runs CSE-FSL (Mu and Shen, ICC 2023), the paper's
first-order baseline: identical wire and update order, FO client steps.

The model is cut into a client front-end θ_c, a client auxiliary head θ_a and a
server back-end θ_s (:mod:`fedapp.task.split`). Inference is θ_c + θ_s; the aux
head only gives the clients a local loss, and its accuracy is logged apart
(``aux-acc``). The arrays this strategy returns each round are the full model's
state dict (θ_c ∪ θ_s), which the ServerApp evaluates on the held-out test set.

Not in the paper's Flower-free description: the server steps on θ_s happen
after all clients replied (same traffic and update order as the paper's
pipelined schedule, no wall-clock overlap), and clients start every round with
a fresh optimizer state (clients are stateless between rounds).
"""

from __future__ import annotations

from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from torch import Tensor, nn

from fedapp.config import AppConfig
from fedapp.task.data import load_server_test
from fedapp.task.evaluate import evaluate, resolve_device
from fedapp.task.seeding import PURPOSE_AUX_INIT, PURPOSE_INIT, derive_seed
from fedapp.task.split import back_end_step, build_split, uniform_average
from fedapp.wire import split as wire
from fedapp.wire.common import (
    STEP_FLOPS,
    STEP_PEAK_MEM_MB,
    TRAIN_LOSS,
    UPLOADS,
    pack_arrays,
)
from strategies.card import StrategyCard
from strategies.phased import PhasedStrategy



class HeronSFL(PhasedStrategy):
    """Hybrid ZO/FO split FL (HERON-SFL), or CSE-FSL with ``split-fo`` clients.

    Client contract, ``train.split``: the message carries ``front`` (θ_c),
    ``aux`` (θ_a) and ``config`` {``server-round``, ``local-steps`` (h, 0 for
    one local epoch), ``upload-every`` (k), ``smoothing`` (μ), ``lr`` (η_l)}.
    The client runs h local steps on CE(a(c(x)), y) with its trainer and
    replies ``front`` and ``aux`` (same keys, shapes, dtypes), ``activations``
    {``acts`` (N, *cut) float32, ``labels`` (N,) int64, ``batch-sizes`` (U,)}
    holding the cut activations of steps 0, k, 2k, ..., ``metrics``
    (:data:`fedapp.wire.split.SPLIT_METRICS`) and ``client-info``. The server never
    sends gradients, activations or θ_s.

    Each round: sample, local split phase, back-end training client by client
    in partition-id order (one Adam step per uploaded batch, decision H9), uniform
    average of θ_c and θ_a (decision H10: evaluation uses θ_c + θ_s).
    """

    def __init__(self, cfg: AppConfig) -> None:
        super().__init__(cfg.server.fraction_train, cfg.server.min_available_nodes)
        self.cfg, self.h = cfg, cfg.heron
        self.device = resolve_device(cfg.client.device)
        self.test, self.spec = load_server_test(cfg.data, cfg.seed)
        self.parts = build_split(
            cfg.model.name, self.spec, self.h.cut_layer, self.h.aux_pool,
            seed=derive_seed(cfg.seed, PURPOSE_INIT), aux_seed=derive_seed(cfg.seed, PURPOSE_AUX_INIT),
        )
        self.parts.back.to(self.device)
        self.server_opt = torch.optim.Adam(self.parts.back.parameters(), lr=self.h.server_lr)
        self.server_order: list[int] = []  # partition ids, in the order θ_s last trained on them

    @classmethod
    def from_config(cls, cfg: AppConfig) -> HeronSFL:
        return cls(cfg)

    # -- the round: one method per phase of the paper (§IV) ----------------------------------

    def run_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        self._load_global(arrays)
        nodes = self._sample(grid)
        replies = self._local_split(grid, server_round, nodes)  # θ_l,i ← h local steps
        if replies:
            self._train_back_end(replies)  # θ_s ← FO steps on the smashed data, client by client
            self._average_front_aux(replies)  # θ_l ← (1/N) Σ_i θ_l,i
        self._record_clients(replies)
        self._evaluate_aux()
        return pack_arrays(self._global_state())

    def _local_split(self, grid: Grid, server_round: int, nodes: list[int]) -> list[wire.SplitUp]:
        """Step 1-2: broadcast θ_c, θ_a; collect θ_c,i, θ_a,i and smashed batches (screened)."""
        content = wire.encode_down(wire.SplitDown(
            server_round=server_round, local_steps=self.h.local_steps,
            upload_every=self.h.upload_every, smoothing=self.h.smoothing, lr=self.h.client_lr,
            front=self.parts.front.state_dict(), aux=self.parts.aux.state_dict(),
        ))
        self.ledger.sampled = len(nodes)

        def check(reply: RecordDict) -> str | None:
            return wire.screen_up(reply, content, self.parts.cut_shape, self.spec.num_classes)

        accepted = self._send(
            grid, server_round, wire.TRAIN_SPLIT, {n: content for n in nodes}, check
        )
        self.ledger.clients = len(accepted)
        return self._in_client_order([wire.decode_up(c) for c in accepted.values()])

    def _in_client_order(self, replies: list[wire.SplitUp]) -> list[wire.SplitUp]:
        """Fixed order: by partition id, so the server's sequential updates are reproducible."""
        for up in replies:
            self.label_counts.setdefault(up.info.partition_id, up.info.label_counts)
        return sorted(replies, key=lambda up: up.info.partition_id)

    def _train_back_end(self, replies: list[wire.SplitUp]) -> None:
        """Step 3: θ_s ← θ_s − η_s ∇ℓ(s(c_i(ξ); θ_s), y), one step per uploaded batch.

        Decision H9, docs/strategies/heron-sfl.md.
        """
        losses = []
        for up in replies:
            for acts, labels in up.batches:
                losses.append(
                    back_end_step(
                        self.parts.back, self.server_opt, acts.to(self.device),
                        labels.to(self.device),
                    )
                )
        self.server_order = [up.info.partition_id for up in replies]
        self.ledger.extra["server-steps"] = len(losses)
        self.ledger.extra["server-loss"] = sum(losses) / max(len(losses), 1)

    def _average_front_aux(self, replies: list[wire.SplitUp]) -> None:
        """Step 4: uniform average of the clients' θ_c and θ_a (not sample-weighted)."""
        self.parts.front.load_state_dict(uniform_average([up.front for up in replies]))
        self.parts.aux.load_state_dict(uniform_average([up.aux for up in replies]))

    def _record_clients(self, replies: list[wire.SplitUp]) -> None:
        """Per-client accounting: bytes by record, one step's FLOPs and peak memory, passes."""
        if not replies:
            return
        rows = []
        for up in replies:
            m, steps = up.metrics, float(up.metrics.steps)
            row: dict[str, float] = {
                "bytes-up-acts": up.bytes_acts,
                "bytes-up-weights": up.bytes_weights,
                STEP_FLOPS: float(m.step_flops),
                STEP_PEAK_MEM_MB: m.step_peak_mem_mb,
                "forward-per-step": float(m.train.forward_passes) / steps,
                "backward-per-step": float(m.train.backward_passes) / steps,
                TRAIN_LOSS: m.train.train_loss,
                UPLOADS: float(m.uploads),
            }
            log(INFO, "heron-sfl client %d: %s", up.info.partition_id,
                ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
            rows.append(row)
        for key in rows[0]:
            self.ledger.extra[f"client-{key}"] = sum(r[key] for r in rows) / len(rows)
        self.ledger.extra["client-bytes-down"] = self.ledger.bytes_down / self.ledger.sampled

    def _evaluate_aux(self) -> None:
        """Decision H10: the aux head's test accuracy (θ_c + θ_a), logged next to θ_c + θ_s's."""
        local = nn.Sequential(self.parts.front, self.parts.aux)
        result = evaluate(local, self.test, self.cfg.server.eval_batch_size, self.device)
        self.ledger.extra["aux-acc"] = result.accuracy
        self.ledger.extra["aux-loss"] = result.loss

    # -- global model and checkpoint ----------------------------------------------------------

    def _load_global(self, arrays: ArrayRecord) -> None:
        """θ_c and θ_s from the arrays the server evaluates (front ∪ back of the full model)."""
        state = arrays.to_torch_state_dict()
        for part in (self.parts.front, self.parts.back):
            part.load_state_dict({k: state[k] for k in part.state_dict()})

    def _global_state(self) -> dict[str, Tensor]:
        return {**self.parts.front.state_dict(), **self.parts.back.state_dict()}

    def state_dict(self) -> dict[str, Any]:
        """θ_a, θ_s and the server's Adam state (θ_c travels in the checkpoint's arrays)."""
        return {
            "aux": {k: v.detach().cpu() for k, v in self.parts.aux.state_dict().items()},
            "back": {k: v.detach().cpu() for k, v in self.parts.back.state_dict().items()},
            "server-optimizer": self.server_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parts.aux.load_state_dict(state["aux"])
        self.parts.back.load_state_dict(state["back"])
        self.server_opt.load_state_dict(state["server-optimizer"])

    def summary(self) -> None:
        h = self.h
        log(INFO, "\t├── model %s cut after %d layers: activations %s, aux-pool %s",
            self.cfg.model.name, self.parts.cut, self.parts.cut_shape, h.aux_pool)
        log(INFO, "\t├── trainer %s: h %s, k %d, B %d, lr %g (%s); server Adam lr %g",
            self.cfg.client.trainer, h.local_steps or "1 epoch", h.upload_every, h.batch_size,
            h.client_lr, h.client_optimizer, h.server_lr)
        log(INFO, "\t├── ZO: %s, %s, P %d, mu %g, bn %s",
            h.direction, h.estimator, h.directions, h.smoothing, h.bn)
        super().summary()


CARD = StrategyCard("heron-sfl", HeronSFL.from_config, frozenset({"split-zo", "split-fo"}))
