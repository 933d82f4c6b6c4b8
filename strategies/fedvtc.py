"""FedVTC strategy: model-heterogeneous FL through shared feature statistics.

Paper: Niu, Dong, Qin, "Bridging Generalization Gap of Heterogeneous Federated Clients Using
Generative Models", ICLR 2026, arXiv 2508.01669 (v1: "Boosting Generalization Performance in
Model-Heterogeneous FL Using Variational Transposed Convolution"). No official code exists; this
is **our reading of the paper** (docs/strategies/fedvtc.md (Our reading of the paper)).
Classifier weights never leave a node. Where the paper is open, our choice is a ``fedvtc.*``
key, with its decision code in docs/strategies/fedvtc.md (Project decisions): decoder
aggregation (``share-decoder``, decision V2), fine-tuning schedule and real-data mixing
(``finetune``, ``mix-real``, decision V4), dispersion (``cov = diag``, decision V5),
distribution matching (``dm``, decision V6).

There is no global model: the headline metric is the mean over clients of their own classifier's
accuracy on the global test set (docs/evaluation.md (Test sets and seeds)), reported in
``ledger.extra`` as ``accuracy`` (its card says ``global_model=False``).

Client contract
---------------
``train.stats``
    Receives ``config`` {``server-round``} and, from round 2, ``global-stats``.
    Trains its classifier one local pass with CE + λ_KL·KL towards the global
    class Gaussians, then replies ``stats`` {``mean``, ``var``: (C, p) float32,
    ``count``: (C,) int64} of its projected features, the train ``metrics`` and
    ``client-info``. Never any weights.
``train.decoder`` (rounds ≥ 2)
    Receives ``global-stats`` and, with ``share-decoder``, the averaged
    ``decoder``. Trains ψ (classifier frozen) on ``L_rec + λ_DM·L_DM``; replies
    ``metrics`` {``num-examples``, ``vtc-loss``, ``rec-loss``, ``dm-loss``,
    ``train-s``} and, with ``share-decoder``, its ``decoder``.
``train.finetune`` (rounds ≥ 2, or the last round with ``finetune = final_only``)
    Receives ``global-stats``. Fine-tunes the whole classifier on its own
    decoder's synthetic images (plus real data with ``mix-real``); replies
    ``metrics`` {``num-examples``, ``finetune-loss``, ``train-s``}.
``evaluate.vtc``
    Replies ``metrics`` {``num-examples``, ``eval-loss``, ``eval-acc`` (global
    test set), ``eval-loss-local``, ``eval-acc-local`` (its local test split)}.
"""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.app import ArrayRecord
from flwr.common import log
from flwr.serverapp import Grid

from fedapp.config import AppConfig, parse_model_map
from fedapp.task.data import load_server_test
from fedapp.task.models import ImageSpec, build_model
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.task.stats import FeatureStats, pool_stats
from fedapp.task.vtc import average_states, build_decoder
from fedapp.wire import fedvtc as wire
from fedapp.wire.common import FINETUNE_LOSS, TRAIN_LOSS, VTC_LOSS, pack_arrays
from strategies.card import StrategyCard
from strategies.phased import PhasedStrategy


def initial_decoder(latent_dim: int, spec: ImageSpec, seed: int) -> ArrayRecord:
    """ψ_0, identical for every client (seeded, so a resumed run starts alike)."""
    return pack_arrays(build_decoder(latent_dim, spec, seed).state_dict())


class FedVTC(PhasedStrategy):
    """Stats → pool → decoder → fine-tune → evaluate, one named method per phase.

    Parameters
    ----------
    num_classes, latent_dim : int
        C and p: the shape every client's statistics must have.
    decoder : ArrayRecord or None
        ψ_0 when the decoder is shared (``fedvtc.share-decoder``), else ``None``.
    finetune : str
        ``every_round`` or ``final_only`` (decision V4, docs/strategies/fedvtc.md).
    num_rounds : int
        R, for ``final_only``.
    """

    def __init__(
        self,
        num_classes: int,
        latent_dim: int,
        decoder: ArrayRecord | None,
        finetune: str,
        num_rounds: int,
        fraction_train: float,
        min_available_nodes: int,
    ) -> None:
        super().__init__(fraction_train=fraction_train, min_available_nodes=min_available_nodes)
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.decoder = decoder
        self.finetune = finetune
        self.global_stats: FeatureStats | None = None
        self.models: dict[int, str] = {}  # node id -> architecture, from client-info
        self.server_round = 0
        self.num_rounds = num_rounds

    @classmethod
    def from_config(cls, cfg: AppConfig) -> FedVTC:
        _, spec = load_server_test(cfg.data, cfg.seed)
        p = cfg.fedvtc.latent_dim
        decoder = (
            initial_decoder(p, spec, derive_seed(cfg.seed, PURPOSE_INIT, 1))
            if cfg.fedvtc.share_decoder
            else None
        )
        return cls(
            num_classes=spec.num_classes,
            latent_dim=p,
            decoder=decoder,
            finetune=cfg.fedvtc.finetune,
            num_rounds=cfg.num_server_rounds,
            fraction_train=cfg.server.fraction_train,
            min_available_nodes=cfg.server.min_available_nodes,
        )

    def run_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        nodes = self._sample(grid)
        self.ledger.sampled = len(nodes)
        stats = self._local_stats(grid, server_round, nodes)  # steps 1-2
        self.ledger.clients = len(stats)
        if stats:
            self.global_stats = pool_stats(list(stats.values()))  # step 3
        # the first round runs steps 1-3 only: docs/strategies/fedvtc.md (Our reading of the paper)
        if server_round > 1 and stats:
            trained = self._train_decoders(grid, server_round, list(stats))  # step 4
            if self.finetune == "every_round" or server_round == self.num_rounds:
                self._finetune(grid, server_round, trained)  # step 5
        self._evaluate(grid, server_round, list(stats))
        self.server_round = server_round
        return ArrayRecord()  # no global model: the server keeps none

    # -- phases ---------------------------------------------------------------------------

    def _local_stats(
        self, grid: Grid, server_round: int, nodes: list[int]
    ) -> dict[int, FeatureStats]:
        """Steps 1-2: clients train their classifiers and reply per-class statistics."""
        content = wire.encode_down(server_round, self.global_stats)
        replies = self._send(
            grid, server_round, wire.TRAIN_STATS, dict.fromkeys(nodes, content),
            check=lambda c: wire.screen_stats_reply(c, self.num_classes, self.latent_dim),
        )
        ups = {n: wire.decode_stats_reply(r) for n, r in replies.items()}
        self.ledger.extra[TRAIN_LOSS] = _mean([u.train_loss for u in ups.values()])
        for node, reply in replies.items():
            self._log_client_once(reply)
            self.models[node] = ups[node].model
        return {n: u.stats for n, u in ups.items()}

    def _train_decoders(self, grid: Grid, server_round: int, nodes: list[int]) -> list[int]:
        """Step 4: clients train ψ on the pooled statistics; shared decoders are averaged."""
        content = wire.encode_down(server_round, self.global_stats, self.decoder)
        replies = self._send(
            grid, server_round, wire.TRAIN_DECODER, dict.fromkeys(nodes, content),
            check=lambda c: wire.screen_reply(c, wire.VTC_DECODER_METRICS, self.decoder),
        )
        ups = [wire.decode_decoder_reply(r) for r in replies.values()]
        self.ledger.extra[VTC_LOSS] = _mean([loss for _, loss, _ in ups])
        if self.decoder is not None and replies:
            states = [decoder for _, _, decoder in ups if decoder is not None]
            weights = [n for n, _, _ in ups]
            self.decoder = pack_arrays(average_states(states, weights))
        return list(replies)

    def _finetune(self, grid: Grid, server_round: int, nodes: list[int]) -> None:
        """Step 5: clients fine-tune their whole classifier on synthetic (and real) data."""
        content = wire.encode_down(server_round, self.global_stats)
        replies = self._send(
            grid, server_round, wire.TRAIN_FINETUNE, dict.fromkeys(nodes, content),
            check=lambda c: wire.screen_reply(c, wire.VTC_FINETUNE_METRICS),
        )
        self.ledger.extra[FINETUNE_LOSS] = _mean(
            [wire.decode_finetune_loss(r) for r in replies.values()]
        )

    def _evaluate(self, grid: Grid, server_round: int, nodes: list[int]) -> None:
        """Every client's classifier on the global test set and its local split; means over clients."""
        content = wire.encode_down(server_round)
        replies = self._send(
            grid, server_round, wire.EVALUATE_VTC, dict.fromkeys(nodes, content),
            check=lambda c: wire.screen_reply(c, wire.VTC_EVAL_METRICS),
        )
        ups = {n: wire.decode_eval_reply(r) for n, r in replies.items()}
        extra = self.ledger.extra
        extra["accuracy"] = _mean([u.accuracy for u in ups.values()])
        extra["loss"] = _mean([u.loss for u in ups.values()])
        local = [u for u in ups.values() if u.measured_locally]
        self.ledger.skipped_evaluate += len(ups) - len(local)  # no local test data
        extra["accuracy-local"] = _mean([u.accuracy_local for u in local])
        extra["loss-local"] = _mean([u.loss_local for u in local])
        for model in sorted({self.models[n] for n in ups}):
            extra[f"accuracy-{model}"] = _mean(
                [u.accuracy for n, u in ups.items() if self.models[n] == model]
            )
        log(INFO, "FedVTC round %d: client-mean accuracy global %.4f, local %.4f (%d clients)",
            server_round, extra["accuracy"], extra["accuracy-local"], len(replies))

    def state_dict(self) -> dict[str, Any]:
        """Pooled statistics, the averaged decoder and the round counter."""
        stats = self.global_stats
        return {
            "round": self.server_round,
            "global_stats": None if stats is None else
            {"mean": stats.mean, "var": stats.var, "count": stats.count},
            "decoder": None if self.decoder is None else self.decoder.to_torch_state_dict(),
            "models": dict(self.models),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_round = int(state["round"])
        stats = state["global_stats"]
        self.global_stats = None if stats is None else FeatureStats(**stats)
        if state["decoder"] is not None:
            self.decoder = pack_arrays(state["decoder"])
        self.models = dict(state["models"])

    def summary(self) -> None:
        log(INFO, "\t├── FedVTC (our reading of arXiv 2508.01669): C = %d, p = %d",
            self.num_classes, self.latent_dim)
        log(INFO, "\t├── decoder shared: %s; fine-tuning: %s",
            self.decoder is not None, self.finetune)
        super().summary()


def _mean(values: list[float]) -> float:
    """Unweighted mean over clients (NaN without replies)."""
    return sum(values) / len(values) if values else float("nan")


def _needs_local_test(cfg: AppConfig) -> str | None:
    if cfg.data.local_test_size == 0:
        return ("strategy 'fedvtc' needs data.local-test-size > 0 "
                "(clients report accuracy on their local test split)")
    return None


def _latent_sizes_match(cfg: AppConfig) -> str | None:
    """Every client architecture must project to ``fedvtc.latent-dim`` (the shared space)."""
    mapping = parse_model_map(cfg.model.clients)
    if isinstance(mapping, list) and mapping:  # round-robin: every client runs one of these
        names = sorted(set(mapping))
    else:  # partitions a map leaves out run model.name
        names = sorted(set(mapping.values() if isinstance(mapping, dict) else []) | {cfg.model.name})
    probe = ImageSpec(1, 28, 28, 10)  # latent sizes do not depend on the input size
    wrong = [f"{m} ({build_model(m, probe).latent_dim})" for m in names
             if build_model(m, probe).latent_dim != cfg.fedvtc.latent_dim]
    if wrong:
        return (f"model.clients = {cfg.model.clients!r} is invalid for strategy 'fedvtc': latent "
                f"size(s) {', '.join(wrong)} differ from fedvtc.latent-dim = "
                f"{cfg.fedvtc.latent_dim}; allowed: models of latent size "
                f"{cfg.fedvtc.latent_dim}, e.g. the card's vtc-cnn-0.5,vtc-cnn-1,vtc-cnn-1.5,vtc-cnn-2")
    return None


CARD = StrategyCard(
    "fedvtc", FedVTC.from_config, frozenset({"fo"}), heterogeneous=True, global_model=False,
    checks=(_needs_local_test, _latent_sizes_match),
)
