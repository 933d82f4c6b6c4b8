"""The Flower side of the clients: one handler module per protocol, routed by message type.

Handlers decode a message (:mod:`fedapp.wire`), delegate to a trainer or a
client-side algorithm (:mod:`clients`) with a plan from :mod:`clients.plans`, and
encode the reply. :mod:`fedapp.client_app` registers :data:`HANDLERS` on the one
ClientApp, wrapped in the fault-injection mod (:mod:`clients.handlers.faults`).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message

from clients.handlers import fedvtc, fedzge, split, weights, zo_seed
from fedapp.wire import fedvtc as fedvtc_wire
from fedapp.wire import fedzge as fedzge_wire
from fedapp.wire import split as split_wire
from fedapp.wire import weights as weights_wire
from fedapp.wire import zo_seed as zo_seed_wire

Handler = Callable[[Message, Context], Message]

#: Message type (``category`` or ``category.action``) -> handler.
HANDLERS: dict[str, Handler] = {
    weights_wire.TRAIN: weights.train,  # fedavg, fedprox, fedgen
    weights_wire.EVALUATE: weights.evaluate_local,
    zo_seed_wire.TRAIN_SEEDS: zo_seed.train,  # zo-seed
    zo_seed_wire.EVALUATE_SEEDS: zo_seed.evaluate_replica,
    split_wire.TRAIN_SPLIT: split.train,  # heron-sfl
    fedzge_wire.TRAIN_LOCAL: fedzge.train_local,  # fedzge
    fedzge_wire.QUERY_LOGITS: fedzge.query_logits,
    fedzge_wire.TRAIN_DISTILL: fedzge.train_distill,
    fedvtc_wire.TRAIN_STATS: fedvtc.train_stats,  # fedvtc
    fedvtc_wire.TRAIN_DECODER: fedvtc.train_decoder,
    fedvtc_wire.TRAIN_FINETUNE: fedvtc.train_finetune,
    fedvtc_wire.EVALUATE_VTC: fedvtc.evaluate_vtc,
}
