"""Issue 19's fault matrix: every strategy × every ``client.fault``, in-process (bench.reliability).

Each cell runs the real ServerApp on three in-process nodes with partition 1 faulty:
the bad reply is rejected (corrupt payload) or counted failed (error, no reply) in
every round, the run completes, and the server's state (global model, zo-seed history,
FedZGE generator, FedVTC statistics) is finite and, where the protocol allows the
comparison, bit-identical to the run in which partition 1 never answers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict

from bench.reliability import BAD_CONFIGS, FAULTS, STRATEGIES, one_line_errors, run_matrix
from strategies import STRATEGIES as REGISTERED


def test_the_matrix_covers_every_strategy_and_fault() -> None:
    assert set(STRATEGIES) == set(REGISTERED)
    assert set(FAULTS) == {"nan", "inf", "shape", "dtype", "missing-key", "extra-key", "raise",
                           "silent"}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_fault_is_caught_counted_and_harmless(
    strategy: str, run_config: dict[str, Any], tmp_path: Path
) -> None:
    verdicts = run_matrix(run_config, tmp_path, [strategy])
    assert [v["fault"] for v in verdicts][0] == "silent" and len(verdicts) == len(FAULTS)
    bad = [v for v in verdicts if not v["ok"]]
    assert not bad, bad
    for v in verdicts:
        assert v["handled"] == ("failed" if v["fault"] in ("raise", "silent") else "rejected")


def test_bad_run_configs_get_one_line_naming_the_key(tmp_path: Path) -> None:
    lines = one_line_errors(tmp_path)
    assert len(lines) == len(BAD_CONFIGS)
    for key, args, line in lines:
        assert line.startswith("fedzg check: invalid run config: ") and "\n" not in line, line
        assert key in line, (args, line)


def test_a_silent_node_answers_only_after_the_servers_timeout(run_config: dict[str, Any]) -> None:
    """Under ``flwr run`` the silent fault sleeps past ``timeouts.<phase>``, then fails."""
    import fedapp.harness  # noqa: F401  (lets a Message be built outside a runtime)
    from clients.handlers.faults import SILENT_MARGIN_S, inject_faults

    cfg = {**run_config, "client.fault": "silent", "client.fault-partitions": "0",
           "timeouts.train": 0.5}
    ctx = Context(run_id=1, node_id=100, node_config={"partition-id": 0, "num-partitions": 1},
                  state=RecordDict(), run_config=cfg)
    msg = Message(RecordDict(), dst_node_id=100, message_type="train.seeds", group_id="1")
    answered: list[Message] = []
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="answered too late"):
        inject_faults(msg, ctx, lambda m, c: answered.append(m) or m)
    assert time.monotonic() - t0 >= 0.5 + SILENT_MARGIN_S and not answered
