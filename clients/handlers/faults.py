"""Fault injection (``client.fault``) as a ClientApp mod: a node that misbehaves on purpose.

Real runs keep ``client.fault = "none"``. The end-to-end and strategy tests set it
on some partitions (``client.fault-partitions``) to check that the server rejects
bad replies and the run goes on without them. The mod wraps every handler
(``ClientApp(mods=[inject_faults])``), lets it answer, and then corrupts the
reply's result payload, so no handler carries test-only branches:

- ``nan``: the first floating-point array becomes NaN;
- ``shape``: the first array gets one element too many (flattened);
- ``raise``: the call fails, and Flower answers with an error reply.

Only the replies that carry what a client computed are touched (:data:`PAYLOADS`):
model weights (``train``), split parts (``train.split``), query logits
(``query.logits``) and feature statistics (``train.stats``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from clients.plans import resolve_node
from fedapp.config import load_config, load_node_config
from fedapp.wire import fedvtc, fedzge, split, weights
from fedapp.wire.common import ARRAYS

StateDict = dict[str, torch.Tensor]

#: Message type -> the reply record a fault corrupts.
PAYLOADS: dict[str, str] = {
    weights.TRAIN: ARRAYS,
    split.TRAIN_SPLIT: split.FRONT,
    fedzge.QUERY_LOGITS: fedzge.OUTPUTS,
    fedvtc.TRAIN_STATS: fedvtc.VTC_STATS,
}


def _nan(state: StateDict) -> StateDict:
    out = dict(state)
    key = next(k for k, v in out.items() if v.is_floating_point())
    out[key] = torch.full_like(out[key], float("nan"))
    return out


def _shape(state: StateDict) -> StateDict:
    out = dict(state)
    key = next(iter(out))
    out[key] = torch.cat([out[key].flatten(), out[key].flatten()[:1]])
    return out


def _raise(state: StateDict) -> StateDict:
    raise RuntimeError("injected client failure (client.fault = 'raise')")


FAULTS: dict[str, Callable[[StateDict], StateDict]] = {
    "nan": _nan,
    "shape": _shape,
    "raise": _raise,
}


def inject(kind: str, state: StateDict) -> StateDict:
    """Corrupt ``state`` as fault ``kind`` describes."""
    return FAULTS[kind](state)


def inject_faults(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The mod: answer ``msg``, then corrupt the reply if this partition injects a fault."""
    reply = call_next(msg, context)
    record = PAYLOADS.get(msg.metadata.message_type)
    if record is None or reply.has_error():
        return reply
    cfg = load_config(context.run_config)
    node = resolve_node(load_node_config(context.node_config), cfg)
    if not cfg.client.faulty(node.partition_id):
        return reply
    state = reply.content.array_records[record].to_torch_state_dict()
    reply.content[record] = ArrayRecord(inject(cfg.client.fault, state))
    return reply
