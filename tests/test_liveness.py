"""Liveness bounds: per-phase reply timeouts and a bounded wait for the minimum nodes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from fedapp.client_app import app as client_app
from fedapp.config import TimeoutsConfig
from fedapp.harness import InProcessGrid
from fedapp.liveness import LivenessGrid, NodesUnavailable
from fedapp.results import read_rounds
from fedapp.server_app import main


class TimeoutRecordingGrid(InProcessGrid):
    """Remembers the timeout of every ``send_and_receive`` by message category."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeouts: list[tuple[str, float | None]] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        self.timeouts.append((messages[0].metadata.message_type, timeout))
        return super().send_and_receive(messages, timeout=timeout)


def timeouts(**values: float) -> TimeoutsConfig:
    base = {"train": 0.0, "evaluate": 0.0, "query": 0.0, "min-nodes": 5.0}
    return TimeoutsConfig.model_validate(base | values)


def serve(cfg: dict[str, Any], grid: InProcessGrid) -> Path:
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return Path(cfg["output-dir"]) / cfg["run-name"]


@pytest.fixture
def small(run_config: dict[str, Any]) -> dict[str, Any]:
    return {**run_config, "data.dataset": "digits", "data.partition": "iid",
            "num-server-rounds": 1}


def test_each_phase_gets_its_own_timeout(small: dict[str, Any]) -> None:
    cfg = {**small, "round-timeout": 77.0, "timeouts.train": 12.0}
    grid = TimeoutRecordingGrid(client_app, cfg, 3)
    serve(cfg, grid)
    assert grid.timeouts == [("train", 12.0), ("evaluate", 77.0)]


def test_too_few_nodes_fail_the_run_with_a_clear_error(small: dict[str, Any]) -> None:
    cfg = {**small, "server.min-available-nodes": 4, "timeouts.min-nodes": 1.0}
    t0 = time.monotonic()
    with pytest.raises(NodesUnavailable, match=r"only 3 of the 4 nodes .* for 1 s"):
        serve(cfg, InProcessGrid(client_app, cfg, 3))
    assert time.monotonic() - t0 < 10
    assert not (Path(cfg["output-dir"]) / cfg["run-name"] / "metrics.jsonl").exists()


def test_the_wait_resets_when_nodes_come_back() -> None:
    now = [0.0]
    online = [[1, 2], [1, 2], [1, 2, 3], [1, 2], [1, 2]]
    inner = InProcessGrid(client_app, {}, 0)
    inner.get_node_ids = lambda: online.pop(0)  # type: ignore[method-assign]
    grid = LivenessGrid(inner, timeouts(**{"min-nodes": 10.0}), 3, clock=lambda: now[0])
    for t in (0.0, 8.0, 9.0, 15.0):  # short since 0, back at 9, short again from 15
        now[0] = t
        grid.get_node_ids()
    now[0] = 26.0
    with pytest.raises(NodesUnavailable):
        grid.get_node_ids()


def test_a_silent_node_is_counted_as_failed_and_the_round_completes(small: dict[str, Any]) -> None:
    silent = lambda m: m.metadata.dst_node_id == 102  # never answers, in both phases
    cfg = {**small, "timeouts.train": 3.0}
    out = serve(cfg, InProcessGrid(client_app, cfg, 3, drop=silent))
    row = read_rounds(out)[1]
    assert (row["clients"], row["failed-train"], row["failed-evaluate"]) == (2, 1, 1)


class QueueGrid(InProcessGrid):
    """Answers through push/pull like the runtime: node 102's reply never comes, the others'
    after ``ready_after`` pulls."""

    synchronous = False

    def __init__(self, *args: Any, ready_after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ready_after, self.pulls = ready_after, 0
        self.queue: dict[str, Any] = {}

    def push_messages(self, messages: Any) -> Any:
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            if msg.metadata.dst_node_id != 102:
                self.queue[f"m{i}"] = super().send_and_receive([msg])[0]
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, message_ids: Any) -> Any:
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []
        return [self.queue.pop(i) for i in list(message_ids) if i in self.queue]


def test_replies_are_pulled_within_milliseconds_and_the_timeout_holds(
    small: dict[str, Any],
) -> None:
    # Flower's Grid sleeps a fixed 0.1 s (simulation) or 3 s (deployment) between pulls;
    # LivenessGrid polls from 2 ms, doubling to 50 ms, and stops at the phase's timeout
    from flwr.app import ConfigRecord, Message, RecordDict

    grid = QueueGrid(client_app, small, 3, ready_after=4)
    live = LivenessGrid(grid, timeouts(), 1)
    msgs = [Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n,
                    message_type="query") for n in (100, 101)]
    t0 = time.monotonic()
    replies = list(live.send_and_receive(msgs, timeout=10.0))
    assert len(replies) == 2 and grid.pulls == 4
    assert time.monotonic() - t0 < 1.0  # 2 + 4 + 8 ms of sleeps, not 3 × 0.1 s
    grid.pulls = 0
    msgs = [Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n,
                    message_type="query") for n in (100, 102)]
    t0 = time.monotonic()
    replies = list(live.send_and_receive(msgs, timeout=0.3))
    assert len(replies) == 1 and 0.3 <= time.monotonic() - t0 < 1.0  # 102 never answers
