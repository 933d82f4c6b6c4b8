"""Run the real ServerApp and ClientApp in one process, without Ray or a SuperLink.

Benchmarks with many seeds cannot afford ``flwr run`` start-ups (a minute each on
two cores), so :func:`run_inprocess` hands the ServerApp's ``main`` a Grid whose
``send_and_receive`` calls the ClientApp handlers directly, one node after the
other, each with its own persistent ``Context`` (node state survives rounds as
on a SuperNode). Messages, screening, byte counts and results files are the
real ones. Building a ``Message`` outside a runtime needs Flower's internal
``TaskIdentity`` (PLATFORM.md §2), set here as in ``tests/fakes.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

TaskIdentity.run_id = 1
TaskIdentity.node_id = 0
TaskIdentity.task_id = 0


class InProcessGrid(Grid):
    """Nodes ``100 + i`` serve partition ``i`` of ``num_nodes``; replies come back in order."""

    def __init__(
        self, client_app: Any, run_config: dict[str, Any], num_nodes: int,
        node_configs: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            100 + i: Context(
                run_id=1, node_id=100 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes}
                | (node_configs or {}).get(i, {}),
                state=RecordDict(), run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }

    @property
    def run(self) -> Any:  # pragma: no cover - unused by the strategies
        raise NotImplementedError

    def set_run(self, run_id: int) -> None:  # pragma: no cover
        pass

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            try:
                replies.append(self.client_app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception as exc:  # as the runtime: a raising handler is an error reply
                replies.append(Message(error=Error(code=0, reason=str(exc)), reply_to=msg))
        return replies


def run_inprocess(run_config: dict[str, Any], num_nodes: int) -> Path:
    """Run the ServerApp on ``num_nodes`` in-process nodes; return the results directory."""
    from fedapp.client_app import app as client_app
    from fedapp.server_app import main

    grid = InProcessGrid(client_app, run_config, num_nodes)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                       run_config=dict(run_config)))
    return Path(run_config["output-dir"]).resolve() / str(run_config["run-name"])


ROOT = Path(__file__).resolve().parents[1]


def pyproject_defaults() -> dict[str, Any]:
    """The run config ``flwr run`` would build from pyproject.toml (dotted keys)."""
    import tomllib

    def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
        return out

    with (ROOT / "pyproject.toml").open("rb") as f:
        return flat(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
