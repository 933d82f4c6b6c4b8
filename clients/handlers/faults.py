"""Fault injection (``client.fault``) as a ClientApp mod: a node that misbehaves on purpose.

Real runs keep ``client.fault = "none"``. The fault-matrix and strategy tests set it
on some partitions (``client.fault-partitions``) to check that the server rejects
bad replies, counts them, and goes on without them. The mod wraps every handler
(``ClientApp(mods=[inject_faults])``), lets it answer, and then corrupts the
reply's result payload, so no handler carries test-only branches:

- ``nan`` / ``inf``: the first floating-point array becomes NaN / +Inf;
- ``shape``: the first array gets one element too many (flattened);
- ``dtype``: the first floating-point array is sent as float64;
- ``missing-key``: the first array of the payload is left out;
- ``extra-key``: an array the contract does not know is added;
- ``raise``: the call fails, and Flower answers with an error reply;
- ``silent``: the node does not answer any message in time: the call sleeps past the
  server's reply timeout for the message (``timeouts.<phase>`` or ``round-timeout``),
  then fails, so the server has dropped it by then and the node is free again. The
  in-process harness models this as messages that get no reply
  (:class:`fedapp.harness.InProcessGrid`).

Only the replies that carry what a client computed are touched (:data:`PAYLOADS`):
model weights (``train``), zo-seed scalars (``train.seeds``), split parts
(``train.split``), query logits (``query.logits``) and feature statistics
(``train.stats``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from clients.plans import resolve_node
from fedapp.config import load_config, load_node_config
from fedapp.wire import fedvtc, fedzge, split, weights, zo_seed
from fedapp.wire.common import ARRAYS

StateDict = dict[str, torch.Tensor]

#: Message type -> the reply record a fault corrupts.
PAYLOADS: dict[str, str] = {
    weights.TRAIN: ARRAYS,
    zo_seed.TRAIN_SEEDS: zo_seed.ZO_STEPS,
    split.TRAIN_SPLIT: split.FRONT,
    fedzge.QUERY_LOGITS: fedzge.OUTPUTS,
    fedvtc.TRAIN_STATS: fedvtc.VTC_STATS,
}

#: The key ``extra-key`` adds to a payload.
EXTRA_KEY = "injected"


def _first_float(state: StateDict) -> str:
    return next(k for k, v in state.items() if v.is_floating_point())


def _fill(value: float) -> Callable[[StateDict], StateDict]:
    def fault(state: StateDict) -> StateDict:
        key = _first_float(state)
        return state | {key: torch.full_like(state[key], value)}
    return fault


def _shape(state: StateDict) -> StateDict:
    key = next(iter(state))
    return state | {key: torch.cat([state[key].flatten(), state[key].flatten()[:1]])}


def _dtype(state: StateDict) -> StateDict:
    key = _first_float(state)
    return state | {key: state[key].to(torch.float64)}


def _missing_key(state: StateDict) -> StateDict:
    first = next(iter(state))
    return {k: v for k, v in state.items() if k != first}


def _extra_key(state: StateDict) -> StateDict:
    return state | {EXTRA_KEY: torch.zeros(1)}


def _raise(state: StateDict) -> StateDict:
    raise RuntimeError("injected client failure (client.fault = 'raise')")


#: Seconds a ``silent`` node sleeps beyond the server's reply timeout.
SILENT_MARGIN_S = 2.0


def _silent(seconds: float) -> None:
    """A node that hangs: sleeps ``seconds``, then fails (its reply would come too late)."""
    time.sleep(seconds)
    raise RuntimeError("injected silent node (client.fault = 'silent') answered too late")


FAULTS: dict[str, Callable[[StateDict], StateDict]] = {
    "nan": _fill(float("nan")),
    "inf": _fill(float("inf")),
    "shape": _shape,
    "dtype": _dtype,
    "missing-key": _missing_key,
    "extra-key": _extra_key,
    "raise": _raise,
}


def inject(kind: str, state: StateDict) -> StateDict:
    """Corrupt ``state`` as fault ``kind`` describes."""
    return FAULTS[kind](dict(state))


def inject_faults(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The mod: answer ``msg``, then corrupt the reply if this partition injects a fault.

    A ``silent`` node answers no message in time; the other faults touch :data:`PAYLOADS` only.
    """
    if context.run_config.get("client.fault", "none") == "none":
        return call_next(msg, context)
    cfg = load_config(context.run_config)
    node = resolve_node(load_node_config(context.node_config), cfg)
    faulty = cfg.client.faulty(node.partition_id)
    if faulty and cfg.client.fault == "silent":
        category = msg.metadata.message_type.partition(".")[0]
        _silent(cfg.timeouts.for_phase(category, cfg.round_timeout) + SILENT_MARGIN_S)
    reply = call_next(msg, context)
    record = PAYLOADS.get(msg.metadata.message_type)
    if record is None or reply.has_error() or not faulty:
        return reply
    state = reply.content.array_records[record].to_torch_state_dict()
    reply.content[record] = ArrayRecord(inject(cfg.client.fault, state))
    return reply
