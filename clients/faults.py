"""Fault injection for robustness tests (``client.fault``): a node that misbehaves on purpose.

Real runs keep ``client.fault = "none"``. The end-to-end tests use it to check
that the server rejects bad replies and the run goes on without them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StateDict = dict[str, torch.Tensor]


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
