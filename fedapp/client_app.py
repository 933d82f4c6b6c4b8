"""The one ClientApp: every message type of every strategy, routed to its handler.

Handlers are thin (decode, delegate to a trainer, encode) and live in
:mod:`fedapp.handlers`, one module per protocol. Every call validates the run
config and this node's node-config, so a bad value fails the call with a
one-line error reply instead of training on it.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedapp.handlers import fedvtc, fedzge, split, weights, zo_seed

Handler = Callable[[Message, Context], Message]

#: (message category, action) -> handler; the message type on the wire is ``category.action``
#: (``default`` is the bare category). Strategies name these in :mod:`fedapp.wire`.
HANDLERS: dict[tuple[str, str], Handler] = {
    ("train", "default"): weights.train,  # fedavg, fedprox, fedgen
    ("evaluate", "default"): weights.evaluate_local,
    ("train", "seeds"): zo_seed.train,  # zo-seed
    ("evaluate", "seeds"): zo_seed.evaluate_replica,
    ("train", "split"): split.train,  # heron-sfl
    ("train", "local"): fedzge.train_local,  # fedzge
    ("query", "logits"): fedzge.query_logits,
    ("train", "distill"): fedzge.train_distill,
    ("train", "stats"): fedvtc.train_stats,  # fedvtc
    ("train", "decoder"): fedvtc.train_decoder,
    ("train", "finetune"): fedvtc.train_finetune,
    ("evaluate", "vtc"): fedvtc.evaluate_vtc,
}

app = ClientApp()
for (category, action), handler in HANDLERS.items():
    getattr(app, category)(action)(handler)
