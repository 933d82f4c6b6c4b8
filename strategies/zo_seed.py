"""ZO-FL (``zo-seed``): zeroth-order clients that upload seeds and scalars, never weights.

FedKSeed (Qin et al., ICML 2024, arXiv 2312.06353) and DeComFL (Li et al.,
ICLR 2025, arXiv 2405.15861), on MeZO's seeded in-place perturbations
(Malladi et al., NeurIPS 2023, arXiv 2305.17333). docs/strategies/zo-seed.md.

Round t:

1. The server hands every sampled node the round's base seed, η_t and the
   aggregate steps of the rounds that node has not seen (its *history*).
2. The node rebuilds θ^t from its stored replica by replay (a node that never
   took part replays from θ^1, which it builds from the shared init seed), runs
   H local ZO steps, and replies only with its H·P projected-gradient scalars
   (and, with ``zo.seed-source = client``, its seeds).
3. The server averages the scalars per seed weighted by examples (shared seeds),
   or keeps every pair pre-weighted (client seeds), appends the round to the
   history, and applies it to its own replica by the same replay function, so
   server and nodes agree bit for bit on one device type.

Apart from bootstrap (``zo-model``: to a node whose missed history outweighs the
model in bytes with ``zo.catchup-max-rounds = "auto"``, or more than N rounds
behind with an integer N; or once to each node when θ^1 is not the
shared-seed init, e.g. a pre-trained model) no parameter crosses the wire. BatchNorm
running statistics are averaged like FedAvg buffers when ``zo.sync-buffers``.
Not implemented: FedKSeed's seed pool (``kseed`` upload) and server momentum.

**Client contract** (``train.seeds``): catch up to ``zo-target-round`` by
replaying ``zo-history`` (or load ``zo-model``), load ``zo-buffers``, keep that
replica (shared by key, :mod:`clients.replicas`; ``context.state`` holds its round
and key) and forget those older than ``zo-keep-rounds``, train H ZO steps from a copy with seeds
``step_seeds(zo-seed-base, h, P[, partition id])`` and lr ``zo-lr``; reply
``zo-steps`` {``scalars`` (H·P,) float32[, ``seeds`` (H·P,) int64]}, the local
``zo-buffers``, ``metrics`` and ``client-info``. ``evaluate.seeds``: catch up the
same way, evaluate the replica on the local test split.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedapp.config import AppConfig
from fedapp.task import zo, zo_history
from fedapp.task.data import load_server_test
from fedapp.task.models import ImageSpec, SplitModel, build_model
from fedapp.task.schedule import round_lr
from fedapp.task.seeding import PURPOSE_INIT, PURPOSE_ZO_STEP, derive_seed
from fedapp.wire import zo_seed as wire
from fedapp.wire.common import pack_arrays
from strategies.card import StrategyCard
from strategies.fedavg import FedAvgRounds, common_kwargs


def initial_model(cfg: AppConfig, spec: ImageSpec) -> SplitModel:
    """θ^1, built from the shared init seed: the ServerApp and every node build the same one."""
    return build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))


class ZOSeed(FedAvgRounds, FedAvg):
    """Seed-compressed zeroth-order aggregation with history replay (see the module docstring)."""

    def __init__(self, cfg: AppConfig, spec: ImageSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg, self.spec = cfg, spec
        model = initial_model(cfg, spec)
        self.model = model  # the server's replica of θ^t
        self.params = zo.trainable(model)
        self.history: list[zo.ZORound] = []
        self._history_bytes = [0]  # [i]: wire bytes of history[:i]
        self._new: list[zo.ZORound] = []  # rounds not yet handed to the journal
        self.model_bytes = zo_history.state_bytes(model.state_dict())
        self.synced: dict[int, int] = {}  # node id -> round whose model it holds
        self._pending: dict[int, int] = {}
        self.explicit_seeds = cfg.zo.seed_source == "client"
        self.initial: dict[str, torch.Tensor] | None = None  # θ^1 when not the shared-seed init

    @classmethod
    def from_config(cls, cfg: AppConfig) -> ZOSeed:
        _, spec = load_server_test(cfg.data, cfg.seed)
        return cls(cfg, spec, **common_kwargs(cfg))

    # --- state for checkpoints and resume ---

    @property
    def current_round(self) -> int:
        """The round whose model the server's replica holds (1 = the initial model)."""
        return len(self.history) + 1

    def journal(self) -> list[dict[str, Any]]:
        """The history rounds aggregated since the last report, as ``journal.jsonl`` rows."""
        rows, self._new = [zo_history.round_to_row(r) for r in self._new], []
        return rows

    def load_journal(self, entries: list[dict[str, Any]]) -> None:
        self.history, self._history_bytes = [], [0]
        for row in entries:
            if row.get("kind") == "zo-history":
                self._append(zo_history.round_from_row(row))

    def state_dict(self) -> dict[str, Any]:
        """The round counter and θ^t itself (the history is in the journal: flat in rounds)."""
        return {
            "round": self.current_round,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "initial": self.initial,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """θ^t from the checkpoint; the history (for catching nodes up) from the journal."""
        self.initial = state.get("initial")
        self.model.load_state_dict(state["model"])
        self.synced, self._pending, self._new = {}, {}, []
        if self.current_round != state["round"]:
            raise ValueError(f"the journal holds {len(self.history)} history rounds but the "
                             f"checkpoint is at round {state['round']}")

    def _append(self, entry: zo.ZORound) -> None:
        self.history.append(entry)
        self._history_bytes.append(
            self._history_bytes[-1] + zo_history.round_bytes(entry, self.explicit_seeds))

    # --- messages ---

    def lr(self, server_round: int) -> float:
        """η_t = zo.lr · client.lr-decay^(t−1), as the nodes compute it."""
        return round_lr(self.cfg.zo.lr, self.cfg.client.lr_decay, server_round)

    def seed_base(self, server_round: int) -> int:
        return derive_seed(self.cfg.seed, PURPOSE_ZO_STEP, server_round)

    def _buffers(self) -> dict[str, torch.Tensor]:
        if not self.cfg.zo.sync_buffers:
            return {}
        return {k: v.detach().cpu() for k, v in self.model.named_buffers()}

    def _set_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        own = dict(self.model.named_buffers())
        with torch.no_grad():
            for key, value in buffers.items():
                own[key].copy_(value)

    def _adopt(self, arrays: ArrayRecord) -> None:
        """Start from the ServerApp's θ^1.

        One that is not the shared-seed init (a pre-trained model) reaches each node
        once, by bootstrap; the shared-seed init never crosses the wire.
        """
        given = arrays.to_torch_state_dict()
        own = self.model.state_dict()
        if given.keys() == own.keys() and all(torch.equal(given[k], own[k]) for k in own):
            return
        self.model.load_state_dict(given)
        self.initial = {k: v.clone() for k, v in given.items()}

    def _too_far(self, synced: int, target: int) -> bool:
        """Whether a node holding θ^synced gets θ^target instead of the history between them."""
        limit = self.cfg.zo.catchup_max_rounds
        if limit == "auto":
            missed = self._history_bytes[target - 1] - self._history_bytes[synced - 1]
            return missed > self.model_bytes
        return limit > 0 and target - synced > limit

    def keep_rounds(self, target: int) -> int:
        """How far back a node may still be caught up by history (0: without limit)."""
        limit = self.cfg.zo.catchup_max_rounds
        if limit != "auto":
            return limit
        # the oldest synced round s with bytes(history[s-1 : target-1]) <= the model's
        oldest = bisect_left(self._history_bytes, self._history_bytes[target - 1] - self.model_bytes)
        return max(target - (oldest + 1), 1)

    def _downlink(self, node_id: int, server_round: int, target: int) -> Message:
        synced = self.synced.get(node_id, 1)
        bootstrap = self._too_far(synced, target) or (
            self.initial is not None and node_id not in self.synced
        )
        down = wire.ZODownlink(
            server_round=server_round,
            target_round=target,
            seed_base=self.seed_base(server_round),
            lr=self.lr(server_round),
            history=[] if bootstrap else self.history[synced - 1 : target - 1],
            buffers=self._buffers(),
            model=self.model.state_dict() if bootstrap else None,
            keep_rounds=self.keep_rounds(target),
        )
        content = wire.encode_down(down, self.explicit_seeds)
        self._pending[node_id] = target
        kind = wire.TRAIN_SEEDS if target == server_round else wire.EVALUATE_SEEDS
        return Message(content=content, message_type=kind, dst_node_id=node_id)

    def _sample(self, phase: Any, server_round: int, grid: Grid) -> list[int]:
        """Flower's FedAvg sampling, used only for the node ids (the content is ours)."""
        sampled = phase(self, server_round, ArrayRecord(), ConfigRecord(), grid)
        return [m.metadata.dst_node_id for m in sampled]

    def _settle(self, replies: list[Message]) -> None:
        """A node that answered holds its target round; one that failed is resynced from scratch."""
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.synced.pop(node, None)
            elif node in self._pending:
                self.synced[node] = self._pending[node]
        self._pending = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.history:
            self._adopt(arrays)
        nodes = self._sample(FedAvg.configure_train, server_round, grid)
        return self._send_train(self._downlink(n, server_round, server_round) for n in nodes)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        pairs = self.cfg.zo.local_steps * self.cfg.zo.num_directions
        buffers = pack_arrays(self._buffers()) if self._buffers() else None
        accepted = self._accept_train(
            replies, lambda c: wire.screen_train_reply(c, pairs, self.explicit_seeds, buffers)
        )
        self._settle(accepted)
        good = [m for m in accepted if not m.has_error()]
        ups = {m.metadata.src_node_id: wire.decode_up(m.content) for m in good}  # arrival order
        entry = self._aggregate(server_round, [ups[n] for n in sorted(ups)])  # fixed replay order
        self._append(entry)
        self._new.append(entry)
        zo.replay_(self.params, entry.steps, self.cfg.zo.direction)
        if ups and buffers:
            self._set_buffers(_average_buffers(list(ups.values()), self._buffers()))
        metrics = (
            self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)
            if good else None
        )
        return pack_arrays(self.model.state_dict()), metrics

    def _aggregate(self, server_round: int, ups: list[wire.ZOUplink]) -> zo.ZORound:
        """ḡ_{h,p} = Σ_k w_k g_{k,h,p}, w_k ∝ n_k (shared seeds); or every pair pre-weighted."""
        z, base = self.cfg.zo, self.seed_base(server_round)
        if not ups:
            return zo.ZORound(server_round, base, ())
        n = np.asarray([float(up.num_examples) for up in ups])
        weights = n / n.sum()  # (K,)
        scalars = np.stack([up.scalars for up in ups]).astype(np.float64)  # (K, H·P)
        lr, p = self.lr(server_round), z.num_directions
        steps = []
        for h in range(z.local_steps):
            cols = slice(h * p, (h + 1) * p)
            if self.explicit_seeds:
                seeds = [int(x) for up in ups if up.seeds is not None for x in up.seeds[cols]]
                grads = (weights[:, None] * scalars[:, cols]).astype(np.float32).ravel()  # (K·P,)
            else:
                seeds = zo.step_seeds(base, h, p)
                grads = (weights @ scalars[:, cols]).astype(np.float32)  # (P,)
            steps.append(zo.ZOStep(tuple(seeds), tuple(grads.tolist()), lr, p, z.weight_decay))
        return zo.ZORound(server_round, base, tuple(steps))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._sample(FedAvg.configure_evaluate, server_round, grid)
        return self._send_evaluate(self._downlink(n, server_round, server_round + 1) for n in nodes)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._settle(replies)
        return super().aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        z = self.cfg.zo
        log(INFO, "ZO-seed: %s/%s, P=%d, H=%d, mu=%g, lr=%g, seeds %s, buffers %s",
            z.estimator, z.direction, z.num_directions, z.local_steps, z.mu, z.lr,
            z.seed_source, "synced" if z.sync_buffers else "local")
        super().summary()


def _average_buffers(
    ups: list[wire.ZOUplink], reference: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """FedAvg of the BatchNorm buffers (weighted by examples; integer counters rounded)."""
    n = np.asarray([float(up.num_examples) for up in ups])
    weights = n / n.sum()
    received = [up.buffers or {} for up in ups]
    out = {}
    for key, ref in reference.items():
        stacked = np.stack([r[key].numpy() for r in received]).astype(np.float64)  # (K, *shape)
        mean = np.tensordot(weights, stacked, axes=1)
        out[key] = torch.as_tensor(np.rint(mean) if not ref.is_floating_point() else mean).to(ref.dtype)
    return out


def _no_momentum(cfg: AppConfig) -> str | None:
    if cfg.zo.momentum > 0:
        return ("zo.momentum must be 0 with strategy 'zo-seed' (replaying (seed, scalar) "
                "pairs cannot rebuild a momentum buffer)")
    return None


CARD = StrategyCard("zo-seed", ZOSeed.from_config, frozenset({"zo"}),
                    checks=(_no_momentum,))
