"""Liveness for real deployments: per-phase reply timeouts and a bounded wait for nodes.

In deployment a SuperNode can die, hang or never connect. Flower's
``Grid.send_and_receive`` drops replies missing at its timeout, but one
``timeout`` covers every phase, and ``FedAvg`` waits for
``min_available_nodes`` forever (PLATFORM.md §2). :class:`LivenessGrid` wraps
the runtime's Grid for any strategy, so custom round loops get the same bounds:

- the timeout of each ``send_and_receive`` is taken from the message category
  (``timeouts.train``, ``timeouts.evaluate``, ``timeouts.query``; 0 keeps the
  caller's, which is ``round-timeout``);
- replies are pulled with a short, growing interval (:data:`POLL_FIRST_S` doubling up
  to :data:`POLL_MAX_S`) instead of the runtime Grid's fixed sleep (0.1 s in
  simulation, 3 s in deployment), so a phase ends within a few milliseconds of its
  last reply (issue 18: Flower's overhead); a Grid that answers synchronously (the
  in-process harness, ``synchronous = True``) is called as it is;
- ``get_node_ids`` raises :class:`NodesUnavailable` once fewer than
  ``server.min-available-nodes`` nodes have been online for longer than
  ``timeouts.min-nodes`` seconds in a row, instead of letting a strategy poll
  forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedapp.config import TimeoutsConfig


#: First wait between two pulls of replies, doubled after each empty pull up to POLL_MAX_S.
POLL_FIRST_S = 0.002
POLL_MAX_S = 0.05


class NodesUnavailable(RuntimeError):
    """Fewer nodes than the run needs stayed online for longer than allowed."""


class LivenessGrid(Grid):
    """Delegates to ``grid``; bounds reply waits per phase and the wait for nodes."""

    def __init__(
        self,
        grid: Grid,
        timeouts: TimeoutsConfig,
        min_nodes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grid, self.timeouts, self.min_nodes, self.clock = grid, timeouts, min_nodes, clock
        self._short_since: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    @property
    def run(self) -> Any:
        return self.grid.run

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self.grid.get_node_ids())
        now = self.clock()
        if len(nodes) >= self.min_nodes:
            self._short_since = None
        elif self._short_since is None:
            self._short_since = now
        elif now - self._short_since > self.timeouts.min_nodes:
            raise NodesUnavailable(
                f"only {len(nodes)} of the {self.min_nodes} nodes the run needs "
                f"(server.min-available-nodes) were connected for "
                f"{self.timeouts.min_nodes:g} s (timeouts.min-nodes); start more "
                f"SuperNodes or lower server.min-available-nodes"
            )
        return nodes

    def wait_for_nodes(self, poll_s: float = 1.0) -> list[int]:
        """Block until enough nodes are online; :class:`NodesUnavailable` after the timeout."""
        while len(nodes := list(self.get_node_ids())) < self.min_nodes:
            log(INFO, "fedzg: waiting for nodes: %d of %d connected", len(nodes), self.min_nodes)
            time.sleep(poll_s)
        return nodes

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        category = messages[0].metadata.message_type.split(".")[0]
        limit = self.timeouts.for_phase(category, timeout if timeout is not None else 0.0)
        t0 = self.clock()
        if getattr(self.grid, "synchronous", False):
            replies = list(self.grid.send_and_receive(messages, timeout=limit or timeout))
        else:
            replies = self._push_and_pull(messages, limit or timeout)
        waited = self.clock() - t0
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        silent = sorted(
            m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in answered
        )
        if silent:
            log(
                WARNING,
                "fedzg: %s phase: no usable reply from node(s) %s after %.1f s (timeout %g s)",
                category,
                silent,
                waited,
                limit,
            )
        return replies

    def _push_and_pull(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """``Grid.send_and_receive`` with a short, growing pull interval (``None``: no limit)."""
        pending = set(self.grid.push_messages(messages))
        end = None if timeout is None else self.clock() + timeout
        replies: list[Message] = []
        wait = POLL_FIRST_S
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            left = None if end is None else end - self.clock()
            if not pending or (left is not None and left <= 0):
                break
            time.sleep(wait if left is None else min(wait, left))
            wait = POLL_FIRST_S if got else min(2 * wait, POLL_MAX_S)
        return replies
