"""FedZGE strategy: black-box clients and a server generator trained by ZO estimates.

Paper: Ma, Wang, Zhang, "Data-Free Black-Box Federated Learning via Zeroth-Order
Gradient Estimation", AAAI 2025, arXiv 2503.06028; official code
maxinge8698/FedZGE @ 2075064 (``main.py``, ``server.py``, ``client.py``). docs/strategies/fedzge.md.

Client weights never leave a node, and nodes may run different architectures
(the global model, ``model.name``, may differ from all of them). Each round:

1. ``train.local``: clients train their private persistent model (E1 epochs).
2. synthesis: the server draws N (z, y) and computes x = G(z, y), keeping the graph.
3. ``query.logits``: clients return the logits of x and of x_j = x + ε·u_j, j = 1..q.
   ``seed`` transport (default, decision Z3, docs/strategies/fedzge.md) sends x once plus a seed
   from which clients rebuild the unit directions u_j; ``tensor`` sends all 1+q batches
   (official).
4. generator: L_G at x and every x_j from the data-size-weighted ensemble ℓ̄, the ZO
   estimate ĝ_x, x.backward(ĝ_x) through G and one Adam(lr_G) step (none with
   lr_G = 0, the frozen-generator ablation). Steps 2-4 run ``generator-steps`` times
   (official: once), each with fresh latents and directions.
5. server KD: E2 full-batch steps of the global model towards ℓ̄(x) of the last
   queried batch, temperature T. With ``official-eval`` the global model is also
   tested after every step the official way (BatchNorm statistics of each test
   batch) and the best step logged as ``accuracy-official-style``: a labelled
   diagnostic, never the headline ``accuracy`` nor a selection criterion.
6. ``train.distill``: clients take E3 KD steps towards ℓ̄(x) on the x they kept.

Client contract
---------------
``train.local``
    ``config`` {``server-round``}. Train the private model kept in ``context.state``
    for E1 epochs; reply ``metrics`` {``num-examples``, ``train-loss``, ``train-s``,
    ``acc-global``, ``acc-local``} (accuracies after training, ``-1`` if not measured).
``query.logits``
    ``inputs`` {``x``: (N, *img)[, ``x-perturbed``: (q, N, *img)]}, ``config``
    {``server-round``, ``num-directions``, ``smoothing``[, ``query-seed``]}. Without
    ``x-perturbed``, rebuild the copies with ``fedapp.task.fedzge.seeded_queries``.
    Reply ``outputs`` {``logits``: (1+q, N, C) float32, row 0 for x} and ``metrics``
    {``num-examples``}; keep x for the local KD.
``train.distill``
    ``inputs`` {``soft-labels``: (N, C)}, ``config`` {``server-round``,
    ``temperature``, ``steps``}. Take the KD steps on the kept x; reply ``metrics``
    {``num-examples``, ``distill-loss``, ``acc-global``, ``acc-local``}.

Failed or rejected query replies are left out and the ensemble weights renormalised
over the clients that answered; if none did, the generator and the global model stay
as they were and the round is logged as skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedapp.config import AppConfig, FedZGEConfig
from fedapp.task.batchnorm import (
    batch_statistics,
    reestimate_running_stats,
    transductive_accuracy,
)
from fedapp.task.data import Arrays, load_server_test
from fedapp.task.evaluate import resolve_device
from fedapp.task.fedzge import (
    GeneratorLossWeights,
    ImageGenerator,
    Latents,
    distill,
    ensemble_logits,
    generator_losses,
    generator_step,
    loss_terms,
    perturbed_queries,
    sample_latents,
    zo_image_gradient,
)
from fedapp.task.models import ImageSpec, SplitModel, build_model
from fedapp.task.seeding import (
    PURPOSE_FEDZGE_GENERATOR,
    PURPOSE_FEDZGE_QUERY,
    PURPOSE_FEDZGE_SYNTH,
    PURPOSE_INIT,
    derive_seed,
)
from fedapp.task.zo import unit_directions
from fedapp.wire import fedzge as wire
from fedapp.wire.common import config_message, pack_arrays
from strategies.card import StrategyCard
from strategies.phased import PhasedStrategy

#: ``global-bn = synthetic``: fresh synthetic batches of N the global model's BatchNorm
#: statistics are re-estimated from after the server KD.
BN_BATCHES = 4


@dataclass(frozen=True, slots=True)
class Synthetic:
    """One round's synthetic batch: x = G(z, y) with its graph, and its perturbed copies."""

    x: torch.Tensor  # (N, *img), on the server device, requires grad through G
    latents: Latents
    directions: torch.Tensor  # u: (q, N, *img), CPU float32, unit norm per sample
    queries: torch.Tensor  # x_j = x + ε·u_j: (q, N, *img), CPU float32
    seed: int


class FedZGE(PhasedStrategy):
    """Data-free black-box FL: ZO-trained generator, KD both ways (docs/strategies/fedzge.md)."""

    def __init__(
        self, cfg: FedZGEConfig, spec: ImageSpec, server_model: SplitModel, seed: int,
        fraction_train: float, min_available_nodes: int, device: torch.device,
        test: Arrays | None = None,
    ) -> None:
        super().__init__(fraction_train=fraction_train, min_available_nodes=min_available_nodes)
        self.cfg, self.spec, self.seed, self.device = cfg, spec, seed, device
        self.test = test  # only for the labelled official-style diagnostic
        self.server_model = server_model.to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, PURPOSE_FEDZGE_GENERATOR))
            self.generator = ImageGenerator(
                spec, cfg.latent_dim, cfg.generator_width, cfg.image_range
            )
        self.generator.to(device)
        self.weights = GeneratorLossWeights(
            cfg.beta_adv, cfg.beta_div, cfg.beta_info, cfg.temperature
        )
        self.generator_optimizer = self._generator_optimizer()
        self.server_optimizer = self._server_optimizer()
        self.round = 0

    @classmethod
    def from_config(cls, cfg: AppConfig) -> FedZGE:
        test, spec = load_server_test(cfg.data, cfg.seed)
        model = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
        return cls(
            cfg.fedzge, spec, model, cfg.seed, cfg.server.fraction_train,
            cfg.server.min_available_nodes, resolve_device(cfg.client.device),
            test if cfg.fedzge.official_eval else None,
        )

    # -- the round --------------------------------------------------------------------------

    def run_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        self.server_model.load_state_dict(arrays.to_torch_state_dict())
        nodes = self._sample(grid)
        self.ledger.sampled = len(nodes)
        self._local_update(grid, server_round, nodes)
        before = self._generator_snapshot()
        losses: list[float] = []
        answers: dict[int, wire.LogitsUp] = {}
        for step in range(self.cfg.generator_steps):
            synthetic = self._synthesize(server_round, step)
            answers = self._query(grid, server_round, nodes, synthetic, step)
            if not answers:
                break
            ensemble = ensemble_logits(  # (1+q, N, C)
                [a.logits for a in answers.values()], [a.num_examples for a in answers.values()]
            )
            losses.append(self._generator_step(synthetic, ensemble))
        self.ledger.clients = len(answers)
        self.ledger.extra["skipped"] = float(not answers)
        if answers:
            self.ledger.extra["generator-loss"] = sum(losses) / len(losses)
            self._server_distill(synthetic.x.detach(), ensemble[0], server_round)
            self._client_distill(grid, server_round, sorted(answers), ensemble[0])
            arrays = pack_arrays(self.server_model.state_dict())
        else:  # a query phase went unanswered: G and its optimiser as they were
            self._generator_restore(before)
            log(WARNING, "FedZGE round %d skipped: no client answered the query", server_round)
        self.round = server_round
        self._per_client_bytes()
        return arrays

    def _local_update(self, grid: Grid, server_round: int, nodes: list[int]) -> None:
        """Step 1: clients train their private models (E1 epochs); we learn only metrics."""
        contents = {n: config_message(server_round) for n in nodes}
        replies = self._send(grid, server_round, wire.TRAIN_LOCAL, contents,
                             wire.screen_local_reply)
        self._mean_accuracy(replies, "before")

    def _synthesize(self, server_round: int, step: int = 0) -> Synthetic:
        """Steps 2-3: x = G(z, y) in train mode (graph kept) and x_j = x + ε·u_j.

        G's BatchNorm normalises by the batch (official: G is always in train mode);
        its running statistics, never used, are left alone.
        """
        cfg = self.cfg
        tail = (step,) if step else ()  # step 0 keeps the one-step run's streams
        latents = sample_latents(
            cfg.synthetic_samples, cfg.latent_dim, self.spec.num_classes,
            derive_seed(self.seed, PURPOSE_FEDZGE_SYNTH, server_round, *tail),
        )
        with batch_statistics(self.generator):
            x = self.generator(latents.z.to(self.device), latents.y.to(self.device))  # (N, *img)
        seed = derive_seed(self.seed, PURPOSE_FEDZGE_QUERY, server_round, *tail)
        u = unit_directions(tuple(x.shape), cfg.num_directions, seed)  # (q, N, *img)
        queries = perturbed_queries(x.detach().float().cpu(), u, cfg.smoothing)
        return Synthetic(x, latents, u, queries, seed)

    def _query(
        self, grid: Grid, server_round: int, nodes: list[int], synthetic: Synthetic, step: int = 0
    ) -> dict[int, wire.LogitsUp]:
        """Step 4: black-box logits (1+q, N, C) and example counts of the answering clients."""
        cfg, x = self.cfg, synthetic.x.detach().float().cpu()
        seeded = cfg.direction_transport == "seed"
        content = wire.encode_query(wire.QueryDown(
            server_round=server_round, x=x, num_directions=cfg.num_directions,
            smoothing=cfg.smoothing, seed=synthetic.seed if seeded else None,
            perturbed=None if seeded else synthetic.queries,
        ))
        shape = (1 + cfg.num_directions, cfg.synthetic_samples, self.spec.num_classes)
        down, up = self.ledger.bytes_down, self.ledger.bytes_up
        replies = self._send(
            grid, server_round, wire.QUERY_LOGITS, {n: content for n in nodes},
            lambda c: wire.screen_logits_reply(c, shape),
        )
        sent, answered = max(len(nodes), 1), max(len(replies), 1)
        for key, moved in (("query-bytes-down-per-client", (self.ledger.bytes_down - down) / sent),
                           ("query-bytes-up-per-client", (self.ledger.bytes_up - up) / answered)):
            self.ledger.extra[key] = moved + (self.ledger.extra.get(key, 0.0) if step else 0.0)
        return {n: wire.decode_logits(c) for n, c in replies.items()}

    def _generator_step(self, synthetic: Synthetic, ensemble: torch.Tensor) -> float:
        """Step 5: L_G from logits, ĝ_x by forward differences, VJP through G, one Adam step.

        The global model answers in eval mode (official ``node/server.py``
        ``generator_update``). Returns L_G(x), all four terms.
        """
        cfg, device = self.cfg, self.device
        # every tensor of the estimate on the server's device: x and its copies (1+q, N, *img)
        batches = torch.cat([synthetic.x.detach().float().unsqueeze(0),
                             synthetic.queries.to(device)])
        latents = Latents(synthetic.latents.z.to(device), synthetic.latents.y.to(device))
        ensemble = ensemble.to(device)
        self.server_model.eval()
        with torch.no_grad():
            server = torch.stack([self.server_model(b).float() for b in batches])  # (1+q, N, C)
        losses = generator_losses(
            ensemble, server, batches, latents, self.weights, cfg.info_term,
            with_diversity=not cfg.exact_diversity, per_sample=cfg.estimator == "per-sample",
        )  # (1+q,) or, per sample, (1+q, N)
        grad_x = zo_image_gradient(losses, synthetic.directions.to(device), cfg.smoothing)
        terms = loss_terms(ensemble[0], server[0], latents, self.weights, batches[0])
        self.ledger.extra.update(terms)
        self.ledger.extra["zo-grad-norm"] = float(grad_x.norm())
        w = self.weights
        loss_x = (terms["generator-fidelity"] + w.adversarial * terms["generator-adversarial"]
                  + w.diversity * terms["generator-diversity"] + w.info * terms["generator-info"])
        if cfg.generator_lr == 0:  # frozen-generator ablation: G stays at its initialisation
            return loss_x
        if cfg.generator_optimizer == "fresh":  # official: a new Adam every round
            self.generator_optimizer = self._generator_optimizer()
        generator_step(
            self.generator, self.generator_optimizer, synthetic.x, grad_x,
            latents if cfg.exact_diversity else None, cfg.beta_div,
        )
        return loss_x

    def _server_distill(self, x: torch.Tensor, teacher: torch.Tensor, server_round: int) -> None:
        """Step 6: E2 full-batch KD steps of the global model, Adam(lr_S) fresh, cosine.

        ``official-eval``: after every step, the official test (BatchNorm statistics of
        each test batch of B, ``node/server.py`` ``global_model_update``), never
        touching the running statistics; the best step is ``accuracy-official-style``,
        the last ``accuracy-batch-stats``. ``global-bn = synthetic``: afterwards the
        running statistics are re-estimated from fresh synthetic batches.
        """
        cfg, scores = self.cfg, []

        def official_test(_: int) -> None:
            assert self.test is not None
            scores.append(transductive_accuracy(
                self.server_model, self.test, cfg.batch_size, self.device))

        self.server_optimizer = self._server_optimizer()
        loss = distill(
            self.server_model, x, teacher.to(self.device), cfg.temperature,
            cfg.server_steps, cfg.server_lr, self.server_optimizer,
            after_step=official_test if self.test is not None else None,
        )
        self.ledger.extra["server-kd-loss"] = loss
        if scores:
            self.ledger.extra["accuracy-official-style"] = max(scores)
            self.ledger.extra["accuracy-batch-stats"] = scores[-1]
        if cfg.global_bn == "synthetic":
            self._reestimate_global_bn(server_round)

    @torch.no_grad()
    def _reestimate_global_bn(self, server_round: int) -> None:
        """The global model's BatchNorm statistics from :data:`BN_BATCHES` fresh batches of G."""
        cfg = self.cfg
        images = []
        for i in range(BN_BATCHES):
            latents = sample_latents(
                cfg.synthetic_samples, cfg.latent_dim, self.spec.num_classes,
                derive_seed(self.seed, PURPOSE_FEDZGE_SYNTH, server_round, 1000 + i),
            )
            with batch_statistics(self.generator):
                images.append(self.generator(latents.z.to(self.device), latents.y.to(self.device)))
        reestimate_running_stats(self.server_model, images)

    def _client_distill(
        self, grid: Grid, server_round: int, nodes: list[int], teacher: torch.Tensor
    ) -> None:
        """Step 7: the answering clients distil from ℓ̄(x) on the x they kept."""
        content = wire.encode_distill(wire.DistillDown(
            server_round, teacher, self.cfg.temperature, self.cfg.distill_steps
        ))
        replies = self._send(grid, server_round, wire.TRAIN_DISTILL, {n: content for n in nodes},
                             wire.screen_distill_reply)
        self._mean_accuracy(replies, "after")
        losses = [wire.decode_distill_loss(c) for c in replies.values()]
        if losses:
            self.ledger.extra["client-kd-loss"] = sum(losses) / len(losses)

    # -- bookkeeping ------------------------------------------------------------------------

    def _mean_accuracy(self, replies: dict[int, RecordDict], when: str) -> None:
        """Clients' mean private-model accuracy (global test set, local split) in the row."""
        accuracies = [wire.decode_accuracy(c) for c in replies.values()]
        for name, values in ((f"client-acc-{when}", [a.on_global for a in accuracies]),
                             (f"client-acc-local-{when}", [a.on_local for a in accuracies])):
            measured = [v for v in values if v >= 0]
            if measured:
                self.ledger.extra[name] = sum(measured) / len(measured)

    def _per_client_bytes(self) -> None:
        sampled = max(self.ledger.sampled, 1)
        self.ledger.extra["bytes-down-per-client"] = self.ledger.bytes_down / sampled
        self.ledger.extra["bytes-up-per-client"] = self.ledger.bytes_up / sampled

    def _generator_snapshot(self) -> dict[str, Any]:
        return {"generator": {k: v.clone() for k, v in self.generator.state_dict().items()},
                "optimizer": copy.deepcopy(self.generator_optimizer.state_dict())}

    def _generator_restore(self, snapshot: dict[str, Any]) -> None:
        self.generator.load_state_dict(snapshot["generator"])
        self.generator_optimizer = self._generator_optimizer()
        self.generator_optimizer.load_state_dict(snapshot["optimizer"])

    def _generator_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.generator.parameters(), lr=self.cfg.generator_lr)

    def _server_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.server_model.parameters(), lr=self.cfg.server_lr)

    def state_dict(self) -> dict[str, Any]:
        """Generator, global model, both optimisers (as left by the last round), round."""
        return {
            "round": self.round,
            "generator": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
            "server_model": {
                k: v.detach().cpu() for k, v in self.server_model.state_dict().items()
            },
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "server_optimizer": self.server_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.generator.load_state_dict(state["generator"])
        self.server_model.load_state_dict(state["server_model"])
        self.generator_optimizer = self._generator_optimizer()
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.server_optimizer = self._server_optimizer()
        self.server_optimizer.load_state_dict(state["server_optimizer"])

    def summary(self) -> None:
        c = self.cfg
        log(INFO, "\t├── FedZGE: q=%d, eps=%g, N=%d, T=%g, betas=(%g, %g, %g)",
            c.num_directions, c.smoothing, c.synthetic_samples, c.temperature,
            c.beta_adv, c.beta_div, c.beta_info)
        log(INFO, "\t├── E1/E2/E3 = %d/%d/%d; lr_k/lr_S/lr_G = %g/%g/%g",
            c.local_epochs, c.server_steps, c.distill_steps, c.client_lr, c.server_lr,
            c.generator_lr)
        log(INFO, "\t├── directions: %s transport; info term: %s; exact diversity: %s",
            c.direction_transport, c.info_term, c.exact_diversity)
        log(INFO, "\t├── generator: %d step(s)/round, %s Adam, %s estimator; BN: answers %s, "
            "client KD %s, global %s", c.generator_steps, c.generator_optimizer, c.estimator,
            c.answer_bn, c.client_kd_bn, c.global_bn)
        super().summary()


def _selection_needs_validation(cfg: AppConfig) -> str | None:
    if cfg.fedzge.select == "best_on_val" and not cfg.data.val_size > 0:
        return ("fedzge.select = 'best_on_val' needs data.val-size > 0 (a validation split "
                "held out of the training data; the test set never selects a round)")
    return None


CARD = StrategyCard(
    "fedzge", FedZGE.from_config, frozenset({"fo"}), heterogeneous=True,
    select=lambda cfg: cfg.fedzge.select, checks=(_selection_needs_validation,),
)
