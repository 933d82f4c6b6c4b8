"""The in-process harness: a Grid that routes Messages straight into the ClientApp.

Tests and benchmarks both run federations with it; neither owns it. Running the
real ServerApp ``main`` on :class:`InProcessGrid` exercises the whole app (config,
strategy card, screening, recorder, results) without Ray or network, one client
at a time; every message and reply is recorded for tests to assert wire contracts.
It stands where Flower's runtime stands, above the two entry points, and imports
nothing else from the app's top: not ``strategies``, not ``clients``.

It is the one module that touches a Flower internal (``TaskIdentity``), because a
``Message`` cannot be built outside a runtime without it; the app never imports it.

:func:`default_run_config`, :func:`run_server_app` and :func:`run_federation` run
one federation in this process through the same strategy, recorder and
``metrics.jsonl`` as ``flwr run``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

#: The repository root (pyproject.toml holds every run-config default).
ROOT = Path(__file__).resolve().parents[1]

TaskIdentity.run_id = 1
TaskIdentity.node_id = 0
TaskIdentity.task_id = 0

ClientFn = Callable[[Message, Context], Message]

#: Replies are computed inside ``send_and_receive``; there is no queue to push to or pull from.
_SYNC_ONLY = "InProcessGrid answers in send_and_receive only (no message queue)"


class InProcessGrid(Grid):
    """Nodes ``100 + i`` for partitions ``i``; every message and reply is recorded."""

    synchronous = True  # replies come from send_and_receive itself (LivenessGrid calls it as is)

    def __init__(
        self,
        client_app: Any,
        run_config: dict[str, Any],
        num_nodes: int,
        node_config: Callable[[int], dict[str, Any]] | None = None,
        drop: Callable[[Message], bool] | None = None,
        record: bool = True,
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes}
                | (node_config(i) if node_config else {}),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }
        self.drop = drop or (lambda m: False)
        self.record = record  # benchmarks switch it off: long runs would hold every model
        self.sent: list[Message] = []
        self.received: list[Message] = []

    @property
    def run(self) -> Any:  # pragma: no cover - not used by our strategies
        raise NotImplementedError("InProcessGrid has no Flower Run; strategies never read it")

    def set_run(self, run_id: int) -> None:  # pragma: no cover
        pass

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError(_SYNC_ONLY)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError(_SYNC_ONLY)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            if self.record:
                self.sent.append(msg)
            ctx = self.contexts[msg.metadata.dst_node_id]
            if self.drop(msg) or _never_answers(ctx):
                continue
            try:
                reply = self.client_app(msg, ctx)
            except Exception as exc:  # the runtime turns handler exceptions into error replies
                reply = Message(error=Error(code=0, reason=str(exc)), reply_to=msg)
            if self.record:
                self.received.append(reply)
            replies.append(reply)
        return replies


def _never_answers(ctx: Context) -> bool:
    """A node with ``client.fault = "silent"``: it would answer after the timeout, so no reply."""
    if ctx.run_config.get("client.fault", "none") != "silent":
        return False
    from fedapp.config import load_config

    return load_config(ctx.run_config).client.faulty(int(ctx.node_config["partition-id"]))


def default_run_config() -> dict[str, Any]:
    """The flat run config of ``[tool.flwr.app.config]`` in pyproject.toml."""

    def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in table.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    with (ROOT / "pyproject.toml").open("rb") as f:
        return flat(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def run_federation(
    overrides: dict[str, Any], num_nodes: int, initial: dict[str, torch.Tensor] | None = None
) -> list[dict[str, Any]]:
    """One federated run in this process; returns its ``metrics.jsonl`` rows.

    ``initial`` replaces the seeded initial model (fine-tuning from a pre-trained one).
    """
    from fedapp.client_app import app as client_app
    from fedapp.config import load_config
    from fedapp.results import ResultsWriter, read_rounds, run_dir
    from fedapp.defaults import resolve_layers
    from fedapp.server_app import config_record, federate
    from fedapp.task.data import load_server_test
    from fedapp.task.models import build_model
    from fedapp.task.seeding import PURPOSE_INIT, derive_seed

    flat = {**default_run_config(), **overrides}
    cfg = load_config(flat, overrides)  # as the ServerApp: exact, refused where clients differ
    _, spec = load_server_test(cfg.data, cfg.seed)
    model = build_model(cfg.model.name, spec, seed=derive_seed(cfg.seed, PURPOSE_INIT))
    if initial is not None:
        model.load_state_dict(initial)
    record = config_record(cfg, resolve_layers(flat, overrides)[1])
    writer = ResultsWriter(run_dir(cfg.output_dir, cfg.run_name), record)
    federate(InProcessGrid(client_app, flat, num_nodes, record=False), cfg, model, writer)
    return read_rounds(Path(writer.dir))


def run_server_app(run_config: dict[str, Any], num_nodes: int) -> Path:
    """Run the real ServerApp ``main`` on ``num_nodes`` in-process nodes; return its results dir."""
    from fedapp.client_app import app as client_app
    from fedapp.server_app import main

    grid = InProcessGrid(client_app, run_config, num_nodes, record=False)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config))
    main(grid, context)
    return Path(run_config["output-dir"]).resolve() / str(run_config["run-name"])
