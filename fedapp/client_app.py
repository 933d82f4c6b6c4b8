"""The one ClientApp (Flower's client entry point): every message type, routed to its handler.

Handlers are thin (decode, delegate to a trainer, encode) and live in
:mod:`clients.handlers`, one module per protocol; fault injection for robustness
tests is a mod around all of them. Every call validates the run config and this
node's node-config, so a bad value fails the call with a one-line error reply
instead of training on it.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

from clients.handlers import HANDLERS
from clients.handlers.faults import inject_faults

app = ClientApp(mods=[inject_faults])
for message_type, handler in HANDLERS.items():
    category, _, action = message_type.partition(".")
    getattr(app, category)(action or "default")(handler)
