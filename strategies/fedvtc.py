"""FedVTC strategy: model-heterogeneous FL through shared feature statistics.

Paper: Niu, Dong, Qin, "Bridging Generalization Gap of Heterogeneous Federated
Clients Using Generative Models", ICLR 2026, arXiv 2508.01669 (v1: "Boosting
Generalization Performance in Model-Heterogeneous FL Using Variational
Transposed Convolution"). No official code exists; this is **our reading of
the paper** (SPEC §5.2). Classifier weights never leave a node. Where the paper
is open, our choice is a ``fedvtc.*`` key: decoder aggregation (``share-decoder``,
V2), fine-tuning schedule and real-data mixing (``finetune``, ``mix-real``, V4),
dispersion (``cov = diag``, V5), distribution matching (``dm``, V6).

There is no global model: the headline metric is the mean over clients of
their own classifier's accuracy on the global test set (SPEC §7.2), reported
in ``ledger.extra`` as ``accuracy`` (``has_global_model = False``).

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

from flwr.app import ArrayRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedapp import records
from fedapp.config import AppConfig
from fedapp.task.data import load_server_test
from fedapp.task.models import ImageSpec
from fedapp.task.seeding import PURPOSE_INIT, derive_seed
from fedapp.task.stats import FeatureStats, pool_stats
from fedapp.task.vtc import average_states, build_decoder
from strategies._phased import PhasedStrategy


def initial_decoder(latent_dim: int, spec: ImageSpec, seed: int) -> ArrayRecord:
    """ψ_0, identical for every client (seeded, so a resumed run starts alike)."""
    return records.pack_arrays(build_decoder(latent_dim, spec, seed).state_dict())


class FedVTC(PhasedStrategy):
    """Stats → pool → decoder → fine-tune → evaluate, one named method per phase.

    Parameters
    ----------
    num_classes, latent_dim : int
        C and p: the shape every client's statistics must have.
    decoder : ArrayRecord or None
        ψ_0 when the decoder is shared (``fedvtc.share-decoder``), else ``None``.
    finetune : str
        ``every_round`` or ``final_only`` (decision V4).
    num_rounds : int
        R, for ``final_only``.
    """

    has_global_model = False

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
        if server_round > 1 and stats:  # the first round runs steps 1-3 only (SPEC §5.2)
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
        content = records.pack_vtc_round(self.global_stats, None, server_round)
        replies = self._send(
            grid, server_round, "train.stats", dict.fromkeys(nodes, content),
            check=lambda c: records.screen_stats_reply(c, self.num_classes, self.latent_dim),
        )
        self._mean_metric(replies, records.TRAIN_LOSS)
        for node, reply in replies.items():
            self._log_client_once(reply)
            self.models[node] = records.client_model(reply)
        return {n: records.unpack_stats(r, records.VTC_STATS) for n, r in replies.items()}

    def _train_decoders(self, grid: Grid, server_round: int, nodes: list[int]) -> list[int]:
        """Step 4: clients train ψ on the pooled statistics; shared decoders are averaged."""
        content = records.pack_vtc_round(self.global_stats, self.decoder, server_round)
        replies = self._send(
            grid, server_round, "train.decoder", dict.fromkeys(nodes, content),
            check=lambda c: records.screen_vtc_reply(c, records.VTC_DECODER_METRICS, self.decoder),
        )
        self._mean_metric(replies, records.VTC_LOSS)
        if self.decoder is not None and replies:
            states = [records.unpack_arrays(r, records.VTC_DECODER) for r in replies.values()]
            weights = [records.reply_metric(r, records.NUM_EXAMPLES) for r in replies.values()]
            self.decoder = records.pack_arrays(average_states(states, weights))
        return list(replies)

    def _finetune(self, grid: Grid, server_round: int, nodes: list[int]) -> None:
        """Step 5: clients fine-tune their whole classifier on synthetic (and real) data."""
        content = records.pack_vtc_round(self.global_stats, None, server_round)
        replies = self._send(
            grid, server_round, "train.finetune", dict.fromkeys(nodes, content),
            check=lambda c: records.screen_vtc_reply(c, records.VTC_FINETUNE_METRICS),
        )
        self._mean_metric(replies, records.FINETUNE_LOSS)

    def _evaluate(self, grid: Grid, server_round: int, nodes: list[int]) -> None:
        """Every client's classifier on the global test set and its local split; means over clients."""
        content = records.pack_vtc_round(None, None, server_round)
        replies = self._send(
            grid, server_round, "evaluate.vtc", dict.fromkeys(nodes, content),
            check=lambda c: records.screen_vtc_reply(c, records.VTC_EVAL_METRICS),
        )
        extra = self.ledger.extra
        extra["accuracy"] = self._mean_metric(replies, records.EVAL_ACC, store=False)
        extra["loss"] = self._mean_metric(replies, records.EVAL_LOSS, store=False)
        extra["accuracy-local"] = self._mean_metric(replies, records.EVAL_ACC_LOCAL, store=False)
        extra["loss-local"] = self._mean_metric(replies, records.EVAL_LOSS_LOCAL, store=False)
        for model in sorted({self.models[n] for n in replies}):
            mine = {n: r for n, r in replies.items() if self.models[n] == model}
            extra[f"accuracy-{model}"] = self._mean_metric(mine, records.EVAL_ACC, store=False)
        log(INFO, "FedVTC round %d: client-mean accuracy global %.4f, local %.4f (%d clients)",
            server_round, extra["accuracy"], extra["accuracy-local"], len(replies))

    # -- helpers ----------------------------------------------------------------------------

    def _mean_metric(self, replies: dict[int, RecordDict], key: str, store: bool = True) -> float:
        """Unweighted mean of metric ``key`` over clients (NaN without replies)."""
        values = [records.reply_metric(r, key) for r in replies.values()]
        mean = sum(values) / len(values) if values else float("nan")
        if store:
            self.ledger.extra[key] = mean
        return mean

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
            self.decoder = records.pack_arrays(state["decoder"])
        self.models = dict(state["models"])

    def summary(self) -> None:
        log(INFO, "\t├── FedVTC (our reading of arXiv 2508.01669): C = %d, p = %d",
            self.num_classes, self.latent_dim)
        log(INFO, "\t├── decoder shared: %s; fine-tuning: %s",
            self.decoder is not None, self.finetune)
        super().summary()
