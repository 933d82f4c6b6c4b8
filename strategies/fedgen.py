"""FedGen strategy: FedAvg plus a server-trained, label-conditioned latent generator.

Paper: Zhu, Hong, Zhou, "Data-Free Knowledge Distillation for Heterogeneous
Federated Learning", ICML 2021, arXiv 2105.10056; official code
zhuangdizhu/FedGen (``serverpFedGen.py``). docs/strategies/fedgen.md.

Each round (docs/strategies/fedgen.md (Round structure and wire)): sample clients; send the
global model, and from round 2 on the generator G_w, alpha_t, beta_t and the available labels;
clients train with the regulariser; the server trains G_w on the *fresh* client heads of the
screened replies (label-weighted teacher loss + diversity loss, optional adversarial student
term), then averages the models as FedAvg does.

Client contract (``train``): when the message carries ``generator``, minimise
CE + (B_gen/B) alpha_t CE(h(G(eps, y_hat)), y_hat) + beta_t KL(softmax(h(G(eps, y)))
|| softmax(f(x))) (:mod:`clients.fedgen`); reply FedAvg's ``arrays`` and
``metrics`` plus ``client-info`` with the label counts (a ConfigRecord, so FedAvg
never averages them).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedapp.config import AppConfig, ClientConfig, FedGenConfig
from fedapp.task.data import load_server_test
from fedapp.task.fedgen import (
    GeneratorLosses,
    GeneratorPlan,
    LatentGenerator,
    frozen_heads,
    head_state,
    label_weights,
    regularization_weight,
    step_scale,
    train_generator,
)
from fedapp.task.models import SplitModel, build_model
from fedapp.task.schedule import round_lr
from fedapp.task.seeding import (
    PURPOSE_FEDGEN_INIT,
    PURPOSE_FEDGEN_SERVER,
    derive_seed,
    torch_generator,
)
from fedapp.wire import fedgen as wire
from fedapp.wire.common import decode_client_info, pack_arrays, unpack_arrays
from strategies.card import StrategyCard
from strategies.fedavg import WEIGHT_TRAINERS, FedAvgRounds, common_kwargs


class FedGenAvg(FedAvg):
    """Flower's FedAvg with FedGen's generator; :class:`FedGen` adds reply screening.

    Parameters
    ----------
    fedgen
        The ``fedgen.*`` run-config section.
    template
        A model of the federation's architecture: its ``head`` is the template of
        the client heads, ``latent_dim`` the generator's output size.
    seed
        Run seed; the generator's initialisation and each round's noise derive from it.
    """

    def __init__(
        self, *, fedgen: FedGenConfig, template: SplitModel, seed: int,
        client: ClientConfig | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.fedgen, self.template, self.seed, self.client = fedgen, template, seed, client
        self.num_classes = int(template.head.weight.shape[0])  # type: ignore[union-attr]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, PURPOSE_FEDGEN_INIT))
            self.generator = LatentGenerator(
                self.num_classes, fedgen.noise_dim, fedgen.hidden_dim, template.latent_dim,
                fedgen.embedding,
            )
        self.optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=fedgen.generator_lr, betas=(0.9, 0.999), eps=1e-8,
            weight_decay=fedgen.generator_weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizer, gamma=fedgen.generator_lr_decay
        )
        self.generator_rounds = 0  # rounds in which G_w was trained
        self.seen_labels: set[int] = set()  # decision G6: labels some client reported
        self.last_losses: GeneratorLosses | None = None
        self._global: ArrayRecord | None = None

    @property
    def _count_floor(self) -> int:
        """Counts above this mean "holds the label" (official draw counts start at 1)."""
        return 1 if self.fedgen.label_counts == "round-draws" else 0

    def _available_labels(self) -> list[int]:
        if self.fedgen.available_labels == "all" or not self.seen_labels:
            return list(range(self.num_classes))
        return sorted(self.seen_labels)

    def _weight_scale(self, server_round: int) -> float:
        """Decision G8: alpha_t, beta_t scaled to this round's client step (1: official)."""
        if self.fedgen.weight_scale == "official" or self.client is None:
            return 1.0
        c = self.client
        return step_scale(c.optimizer, round_lr(c.lr, c.lr_decay, server_round), c.momentum)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        if server_round == 1:  # regularise from round 2: G_w is untrained before
            return super().configure_train(server_round, arrays, config, grid)
        t, f = server_round - 1, self.fedgen  # t: the official 0-based round index
        scale = self._weight_scale(server_round)
        alpha = scale * regularization_weight(f.alpha0, f.regularizer_decay, f.regularizer_floor, t)
        beta = scale * regularization_weight(f.beta0, f.regularizer_decay, f.regularizer_floor, t)
        config = wire.fedgen_config(config, alpha, beta, self._available_labels())
        messages = list(super().configure_train(server_round, arrays, config, grid))
        wire.attach_generator(messages, pack_arrays(self.generator.state_dict()))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)  # may be one-shot: G_w and FedAvg both read them
        self._train_generator(server_round, [m for m in replies if not m.has_error()])
        return super().aggregate_train(server_round, replies)

    def _train_generator(self, server_round: int, replies: list[Message]) -> None:
        """G_w <- 50 Adam steps on the fresh heads, then one lr decay.

        docs/strategies/fedgen.md (Generator objective).
        """
        states, counts = [], []
        for msg in replies:
            info = decode_client_info(msg.content)
            if info is None or len(info.label_counts) != self.num_classes:
                log(WARNING, "FedGen: node %d sent no usable label counts; its head is "
                    "left out of generator training", msg.metadata.src_node_id)
                continue
            states.append(head_state(unpack_arrays(msg.content)))
            counts.append(info.label_counts)
        if not states:
            return
        count_matrix = torch.tensor(counts, dtype=torch.float64)  # (K, C)
        weights, qualified = label_weights(count_matrix, self._count_floor)
        held = count_matrix.max(dim=0).values > self._count_floor
        self.seen_labels |= {int(y) for y in torch.nonzero(held).flatten()}
        if not qualified:
            return
        f = self.fedgen
        plan = GeneratorPlan(f.generator_steps, f.generator_batch_size, f.noise,
                             f.teacher_weight, f.diversity_weight, f.student_weight)
        noise = torch_generator(derive_seed(self.seed, PURPOSE_FEDGEN_SERVER, server_round))
        heads = frozen_heads(self.template.head, states)
        self.last_losses = train_generator(
            self.generator, self.optimizer, heads, weights, qualified, plan, noise,
            student=self._student(),
        )
        self.scheduler.step()
        self.generator_rounds += 1
        log(INFO, "FedGen generator (round %d, %d heads): teacher %.4f  diversity %.4f  "
            "student %.4f", server_round, len(states), self.last_losses.teacher,
            self.last_losses.diversity, self.last_losses.student)

    def _student(self) -> torch.nn.Module | None:
        """The global model's head, for the optional adversarial term (beta_e > 0)."""
        if self.fedgen.student_weight == 0 or self._global is None:
            return None
        return frozen_heads(self.template.head, [head_state(self._global.to_torch_state_dict())])[0]

    def generator_state(self) -> dict[str, Any]:
        """G_w, its Adam state, lr schedule, round counter and seen labels (checkpoint)."""
        return {
            "generator": {k: v.detach().cpu().clone() for k, v in
                          self.generator.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "round": self.generator_rounds,
            "seen-labels": sorted(self.seen_labels),
        }

    def load_generator_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`generator_state` saved."""
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator_rounds = int(state["round"])
        self.seen_labels = {int(y) for y in state["seen-labels"]}

    def summary(self) -> None:
        f = self.fedgen
        n = sum(p.numel() for p in self.generator.parameters())
        log(INFO, "FedGen: generator %d parameters (noise %d %s, hidden %d, latent %d); "
            "%d Adam steps/round at lr %g; alpha0 %g, beta0 %g; label counts %s",
            n, f.noise_dim, f.noise, f.hidden_dim, self.generator.latent_dim,
            f.generator_steps, f.generator_lr, f.alpha0, f.beta0, f.label_counts)
        super().summary()


class FedGen(FedAvgRounds, FedGenAvg):
    """FedGen behind reply screening and byte accounting: G_w trains on screened replies."""

    def state_dict(self) -> dict[str, Any]:
        # the base's (empty) state_dict precedes FedGenAvg in the MRO
        return self.generator_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (resume after a crash)."""
        self.load_generator_state(state)


def build_fedgen(cfg: AppConfig) -> FedGen:
    _, spec = load_server_test(cfg.data, cfg.seed)
    template = build_model(cfg.model.name, spec)
    return FedGen(**common_kwargs(cfg), fedgen=cfg.fedgen, template=template, seed=cfg.seed,
                  client=cfg.client)


CARD = StrategyCard("fedgen", build_fedgen, WEIGHT_TRAINERS)
