"""The strategy base: round loop, send/screen/count, one-way reports and resume, in process."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedapp.harness import InProcessGrid
from fedapp.ledger import RoundReport
from strategies.phased import NotEnoughNodes, PhasedStrategy


def echo_app(msg: Message, ctx: Context) -> Message:
    """Replies {metrics: {value: partition id}}; partition 1 fails, partition 2 sends NaN."""
    pid = int(ctx.node_config["partition-id"])
    if pid == 1:
        raise RuntimeError("boom")
    value = float("nan") if pid == 2 else float(pid)
    return Message(RecordDict({"metrics": MetricRecord({"value": value})}), reply_to=msg)


def finite(content: RecordDict) -> str | None:
    value = content.metric_records["metrics"]["value"]
    return None if value == value else "NaN value"


class Echo(PhasedStrategy):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: list[dict[int, float]] = []

    def run_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        nodes = self._sample(grid)
        contents = {n: RecordDict({"config": ConfigRecord({"r": server_round})}) for n in nodes}
        replies = self._send(grid, server_round, "query.echo", contents, check=finite)
        self.seen.append({n: c.metric_records["metrics"]["value"] for n, c in replies.items()})
        return arrays


def test_send_counts_bytes_failures_and_rejections() -> None:
    grid = InProcessGrid(echo_app, {}, num_nodes=4)
    strategy = Echo(fraction_train=1.0, min_available_nodes=2)
    ledgers = {}

    def on_round(report: RoundReport) -> None:
        ledgers[report.round] = report.ledger

    strategy.start(grid, ArrayRecord(), num_rounds=2, on_round=on_round)
    assert sorted(ledgers) == [0, 1, 2]
    assert strategy.seen == [{100: 0.0, 103: 3.0}] * 2
    for ledger in (ledgers[1], ledgers[2]):
        assert (ledger.failed, ledger.rejected) == (1, 1)
        assert ledger.bytes_down > 0 and ledger.bytes_up > 0
    assert grid.sent[-1].metadata.message_type == "query.echo"


def test_too_few_nodes_fail_within_the_wait() -> None:
    grid = InProcessGrid(echo_app, {}, num_nodes=1)
    strategy = Echo(fraction_train=1.0, min_available_nodes=3, node_wait=0.0)
    with pytest.raises(NotEnoughNodes, match="only 1 of server.min-available-nodes = 3"):
        strategy.start(grid, ArrayRecord(), num_rounds=1)


class Counting(Echo):
    """Echo whose checkpoint state is the number of rounds it has run."""

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": len(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = [{}] * int(state["rounds"])


def test_reports_flow_one_way_with_the_state_after_each_round() -> None:
    grid = InProcessGrid(echo_app, {}, num_nodes=4)
    strategy = Counting(fraction_train=1.0, min_available_nodes=2)
    reports: list[RoundReport] = []
    strategy.start(grid, ArrayRecord(), num_rounds=2, on_round=reports.append)
    assert [(r.round, r.state["rounds"]) for r in reports] == [(0, 0), (1, 1), (2, 2)]
    assert reports[0].ledger.bytes_down == 0 and reports[2].ledger.bytes_down > 0


def test_a_resumed_strategy_runs_the_remaining_rounds_with_their_true_numbers() -> None:
    grid = InProcessGrid(echo_app, {}, num_nodes=4)
    strategy = Counting(fraction_train=1.0, min_available_nodes=2)
    strategy.resume({"rounds": 2}, {0: [1, 2]}, next_round=3)
    reports: list[RoundReport] = []
    strategy.start(grid, ArrayRecord(), num_rounds=4, on_round=reports.append)
    assert [r.round for r in reports] == [3, 4]  # no round-0 report when resuming
    assert {int(m.content["config"]["r"]) for m in grid.sent} == {3, 4}
    assert reports[-1].state == {"rounds": 4} and reports[-1].label_counts == {0: [1, 2]}
