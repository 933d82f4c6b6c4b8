"""zo-seed through the in-process InProcessGrid: scalars up, history down, replicas equal the server's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.handlers import zo_seed as zo_handler
from fedapp.client_app import app as client_app
from fedapp.config import load_config
from fedapp.harness import InProcessGrid
from fedapp.results import read_jsonl, read_rounds
from fedapp.server_app import main
from fedapp.task import zo, zo_history
from fedapp.task.models import build_model
from fedapp.wire import zo_seed as wire
from fedapp.wire.common import (
    CLIENT_INFO,
    INFO_PARTITION,
    INFO_TRAINER,
    METRICS,
    SERVER_ROUND,
    ClientInfo,
    TrainMetrics,
    pack_arrays,
    round_config,
)
from strategies import build_strategy


@pytest.fixture
def zo_cfg(run_config: dict) -> dict:
    return {
        **run_config,
        "strategy": "zo-seed",
        "client.trainer": "zo",
        "data.dataset": "digits",
        "data.partition": "iid",
        "num-server-rounds": 3,
        "zo.local-steps": 4,
        "zo.num-directions": 2,
        "zo.lr": 1e-3,
    }


def run(cfg: dict, num_nodes: int = 3, app: Any = client_app, **kw: Any) -> tuple[InProcessGrid, Path]:
    grid = InProcessGrid(app, cfg, num_nodes, **kw)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return grid, Path(cfg["output-dir"]) / cfg["run-name"]


def param_names(cfg: dict) -> set[str]:
    from fedapp.task.data import load_server_test

    app_cfg = load_config(cfg)
    _, spec = load_server_test(app_cfg.data, app_cfg.seed)
    return {n for n, _ in build_model(app_cfg.model.name, spec).named_parameters()}


def assert_replicas_match_server(grid: InProcessGrid, out: Path, nodes: list[int]) -> None:
    server = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    for node in nodes:
        replica, synced = zo_handler.held_replica(grid.contexts[node])  # type: ignore[misc]
        assert synced == 4  # holds θ^4: the model after round 3's aggregation
        for key, value in server.items():
            assert torch.equal(replica[key], value), (node, key)  # bitwise, same device type


def no_parameter_crosses_the_wire(grid: InProcessGrid, names: set[str]) -> None:
    for msg in grid.sent + grid.received:
        if msg.has_error():
            continue
        for key, record in msg.content.array_records.items():
            assert key != wire.ZO_MODEL, "bootstrap happened"
            assert not (set(record) & names), (key, sorted(set(record) & names))


def test_zo_seed_round_trip(zo_cfg: dict) -> None:
    grid, out = run(zo_cfg)
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all((r["clients"], r["rejected"], r["failed-train"]) == (3, 0, 0) for r in rows[1:])
    no_parameter_crosses_the_wire(grid, param_names(zo_cfg))
    assert_replicas_match_server(grid, out, [100, 101, 102])
    train = [m for m in grid.sent if m.metadata.message_type == wire.TRAIN_SEEDS]
    assert len(train) == 9
    up = [m for m in grid.received if m.metadata.message_type == wire.TRAIN_SEEDS]
    assert all(wire.decode_up(m.content).scalars.shape == (8,) for m in up)  # H·P scalars
    assert all(r["bytes-up"] / 3 < 2048 for r in rows[1:])  # per client per round
    metrics = [m.content[METRICS] for m in up]
    assert all(m["backward-passes"] == 0 and m["forward-passes"] == 4 * 2 * 2 for m in metrics)
    assert rows[-1]["loss"] != rows[0]["loss"]  # the replica moved (learning: test_trainer_zo)


def test_missed_rounds_are_caught_up_by_replay(zo_cfg: dict) -> None:
    # node 102 misses rounds 1-2 (train and evaluate): a late joiner, it replays from θ^1
    late = lambda m: m.metadata.dst_node_id == 102 and round_config(m.content)[SERVER_ROUND] < 3
    grid, out = run({**zo_cfg, "zo.seed-source": "client"}, drop=late)
    rows = read_rounds(out)
    assert [r["clients"] for r in rows[1:]] == [2, 2, 3]
    history = [m for m in grid.sent if m.metadata.dst_node_id == 102
               and m.metadata.message_type == wire.TRAIN_SEEDS][-1]
    assert [r.round for r in wire.unpack_history(history.content[wire.ZO_HISTORY])] == [1, 2]
    no_parameter_crosses_the_wire(grid, param_names(zo_cfg))
    assert_replicas_match_server(grid, out, [100, 101, 102])


def test_bootstrap_beyond_the_catch_up_limit(zo_cfg: dict) -> None:
    late = lambda m: m.metadata.dst_node_id == 102 and round_config(m.content)[SERVER_ROUND] < 3
    grid, out = run({**zo_cfg, "zo.catchup-max-rounds": 1}, drop=late)
    boots = [m for m in grid.sent if wire.ZO_MODEL in m.content.array_records]
    assert boots and {m.metadata.dst_node_id for m in boots} == {102}
    assert_replicas_match_server(grid, out, [100, 101, 102])


def corrupting(kind: str) -> Any:
    def app(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        if ctx.node_id == 101 and msg.metadata.message_type == wire.TRAIN_SEEDS:
            steps = reply.content[wire.ZO_STEPS]
            scalars = steps["scalars"].numpy().copy()
            scalars = np.append(scalars, 1.0).astype(np.float32) if kind == "length" else scalars * np.nan
            reply.content[wire.ZO_STEPS] = ArrayRecord({"scalars": Array(scalars)})
        return reply
    return app


@pytest.mark.parametrize("kind", ["nan", "length"])
def test_bad_scalars_are_rejected_and_counted(zo_cfg: dict, kind: str) -> None:
    grid, out = run({**zo_cfg, "num-server-rounds": 2}, app=corrupting(kind))
    rows = read_rounds(out)
    assert all((r["clients"], r["rejected"]) == (2, 1) for r in rows[1:])
    assert np.isfinite([r["loss"] for r in rows]).all()


def test_the_journal_replays_to_the_checkpointed_model(zo_cfg: dict) -> None:
    # The checkpoint holds θ^t and the round, not the history: the history is appended to
    # journal.jsonl once per round, and replaying it from θ^1 gives θ^t bit for bit
    cfg = {**zo_cfg, "zo.weight-decay": 1e-2, "zo.direction": "sphere"}
    _, out = run(cfg)
    saved = torch.load(out / "model.pt", weights_only=False)
    assert saved["strategy"]["round"] == 4 and "history" not in saved["strategy"]
    journal = read_jsonl(out / "journal.jsonl")
    assert [r["round"] for r in journal] == [1, 2, 3]
    fresh = build_strategy(load_config(cfg))
    replayed = zo.replay_rounds_(zo.trainable(fresh.model),  # type: ignore[attr-defined]
                                 [zo_history.round_from_row(r) for r in journal], 1, "sphere")
    assert replayed == 4
    for key, value in fresh.model.named_parameters():  # type: ignore[attr-defined]
        assert torch.equal(value, saved["state_dict"][key]), key
    resumed = build_strategy(load_config(cfg))
    resumed.resume(saved["strategy"], {}, 4, journal)
    assert resumed.history == fresh_history(journal)  # type: ignore[attr-defined]
    for key, value in resumed.model.state_dict().items():  # type: ignore[attr-defined]
        assert torch.equal(value, saved["state_dict"][key]), key


def fresh_history(journal: list[dict]) -> list[zo.ZORound]:
    return [zo_history.round_from_row(r) for r in journal]


def test_mixed_fedavg_federation(run_config: dict) -> None:
    cfg = {**run_config, "data.dataset": "digits", "data.partition": "iid", "num-server-rounds": 2,
           "client.trainer": "mixed", "client.zo-fraction": 0.5, "client.lr": 0.1,
           "client.local-epochs": 2, "zo.local-steps": 5, "zo.lr": 1e-3}
    grid, out = run(cfg, num_nodes=4)
    rows = read_rounds(out)
    assert all(r["clients"] == 4 and r["rejected"] == 0 for r in rows[1:])
    assert rows[-1]["accuracy"] > 0.3
    kinds = {}
    for m in grid.received:
        if m.metadata.message_type == "train":
            info, met = m.content[CLIENT_INFO], m.content[METRICS]
            kinds[info[INFO_PARTITION]] = (info[INFO_TRAINER], met["backward-passes"])
    assert kinds[0][0] == kinds[1][0] == "zo" and kinds[2][0] == kinds[3][0] == "fo"
    assert kinds[0][1] == 0 and kinds[2][1] > 0


def test_pretrained_start_reaches_each_node_once_by_bootstrap(zo_cfg: dict) -> None:
    from flwr.app import ConfigRecord

    from strategies.zo_seed import initial_model

    strategy = build_strategy(load_config(zo_cfg))
    pretrained = initial_model(strategy.cfg, strategy.spec)  # type: ignore[attr-defined]
    with torch.no_grad():
        next(pretrained.parameters()).add_(0.1)  # not the shared-seed init any more
    grid = InProcessGrid(client_app, zo_cfg, 3)
    strategy.start(grid=grid, initial_arrays=pack_arrays(pretrained.state_dict()),
                   num_rounds=2, train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    boots = [m.metadata.dst_node_id for m in grid.sent if wire.ZO_MODEL in m.content.array_records]
    assert sorted(boots) == [100, 101, 102]  # once per node, then replay only
    server = strategy.model.state_dict()  # type: ignore[attr-defined]
    for node in (100, 101, 102):
        replica, _ = zo_handler.held_replica(grid.contexts[node])  # type: ignore[misc]
        assert all(torch.equal(replica[k], v) for k, v in server.items())


def test_aggregate_train_averages_scalars_per_seed_by_examples(zo_cfg: dict) -> None:
    # Prepare: H = 4 steps of P = 2 directions; node 100 (1 example) uploads all 1s,
    # node 101 (3 examples) all 5s; shared seeds, so pair h·P + p carries the same seed
    cfg = {**zo_cfg, "zo.sync-buffers": False}
    strategy = build_strategy(load_config(cfg))
    grid = InProcessGrid(client_app, cfg, num_nodes=2)  # clients are never called
    initial = pack_arrays(strategy.model.state_dict())  # the shared-seed θ^1: nothing to adopt
    sent = list(strategy.configure_train(1, initial, ConfigRecord(), grid))
    metrics = TrainMetrics(1, 0.5, 16, 0, 1.0, 0.1)

    def reply(node: int, value: float, examples: int) -> Message:
        steps = tuple(zo.ZOStep((0, 0), (value, value), 1e-3, 2) for _ in range(4))
        content = wire.encode_train_reply(
            steps, False, None, dataclasses.replace(metrics, num_examples=examples),
            ClientInfo(node - 100, "zo", "fedgen-cnn", [examples]),
        )
        return Message(content, reply_to=next(m for m in sent if m.metadata.dst_node_id == node))

    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    # Execute
    arrays, _ = strategy.aggregate_train(1, [reply(101, 5.0, 3), reply(100, 1.0, 1)])
    # Assert: ḡ = (1·1 + 3·5) / 4 = 4 for every pair, seeds from the round's base, model moved
    (entry,) = strategy.history
    assert entry.round == 1 and len(entry.steps) == 4
    for h, step in enumerate(entry.steps):
        assert step.grads == (4.0, 4.0)
        assert list(step.seeds) == zo.step_seeds(strategy.seed_base(1), h, 2)
    assert arrays is not None and strategy.ledger.clients == 2
    assert any(not torch.equal(v, before[k]) for k, v in strategy.model.state_dict().items())


def test_client_fault_nan_is_injected_rejected_and_counted(zo_cfg: dict) -> None:
    """Issue 19 bug 5: ``client.fault`` reaches zo-seed's ``train.seeds`` replies too."""
    cfg = {**zo_cfg, "num-server-rounds": 2, "client.fault": "nan",
           "client.fault-partitions": "1"}
    grid, out = run(cfg)
    rows = read_rounds(out)
    assert all((r["clients"], r["rejected"]) == (2, 1) for r in rows[1:])
    assert np.isfinite([r["loss"] for r in rows]).all()
    bad = [m for m in grid.received if m.metadata.message_type == wire.TRAIN_SEEDS
           and not np.isfinite(m.content[wire.ZO_STEPS]["scalars"].numpy()).all()]
    assert len(bad) == 2 and {m.metadata.src_node_id for m in bad} == {101}


def test_replicas_without_local_test_data_skip_evaluation(zo_cfg: dict) -> None:
    """Issue 18: ``evaluate.seeds`` on an empty local split is skipped, not rejected."""
    _, out = run({**zo_cfg, "num-server-rounds": 2, "data.local-test-size": 0.001})
    for r in read_rounds(out)[1:]:
        assert (r["skipped-evaluate"], r["failed-evaluate"], r["rejected"], r["clients"]) == (3, 0, 0, 3)


# --- growth: flat in rounds and nodes (docs/strategies/zo-seed.md, Growth) ---


def test_auto_catch_up_sends_the_model_once_the_history_outweighs_it(zo_cfg: dict) -> None:
    strategy = build_strategy(load_config(zo_cfg))  # zo.catchup-max-rounds = "auto" (default)
    assert strategy.cfg.zo.catchup_max_rounds == "auto"  # type: ignore[attr-defined]
    model_bytes = strategy.model_bytes  # type: ignore[attr-defined]
    pairs = (model_bytes // 3 - zo_history.ROUND_OVERHEAD_BYTES) // 4 - 1  # 3 rounds fit, 4 do not
    for t in range(1, 9):
        step = zo.ZOStep(tuple(range(pairs)), tuple([0.5] * pairs), 1e-3, pairs)
        strategy._append(zo.ZORound(t, t, (step,)))  # type: ignore[attr-defined]
    target = 9
    assert [strategy._too_far(target - gap, target) for gap in (1, 2, 3, 4, 5)] == [  # type: ignore[attr-defined]
        False, False, False, True, True]
    assert strategy.keep_rounds(target) == 3  # type: ignore[attr-defined]


def test_nodes_hold_a_key_not_a_model_and_share_replicas(zo_cfg: dict) -> None:
    from clients import replicas

    grid, out = run(zo_cfg, num_nodes=6)
    assert_replicas_match_server(grid, out, list(range(100, 106)))
    state_bytes = [len(repr(c.state.config_records)) for c in grid.contexts.values()]
    assert max(state_bytes) < 512  # round and key only: flat in the model size
    assert len({str(c.state.config_records[wire.ZO_SYNC]) for c in grid.contexts.values()}) == 1
    assert len(replicas.STORE._cache) <= replicas.IN_MEMORY  # shared, whatever the node count
    fresh = replicas.ReplicaStore(root=replicas.STORE.directory)  # another process, same machine
    server = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    replica, _ = zo_handler.held_replica(grid.contexts[100], fresh)  # type: ignore[misc]
    assert all(torch.equal(replica[k], v) for k, v in server.items())  # read back from disk


def test_a_node_without_its_replica_fails_once_then_is_resynchronised(
    zo_cfg: dict, tmp_path: Path
) -> None:
    from clients import replicas

    def elsewhere(msg: Message, ctx: Context) -> Message:
        # node 101 runs round 3's training on a machine that has none of its replicas
        if ctx.node_id == 101 and msg.metadata.message_type == wire.TRAIN_SEEDS \
                and round_config(msg.content)[SERVER_ROUND] == 3:
            shared, replicas.STORE = replicas.STORE, replicas.ReplicaStore(root=tmp_path / "empty")
            try:
                return client_app(msg, ctx)
            finally:
                replicas.STORE = shared
        return client_app(msg, ctx)

    grid, out = run({**zo_cfg, "num-server-rounds": 4}, app=elsewhere)
    rows = read_rounds(out)
    assert [r["failed-train"] for r in rows[1:]] == [0, 0, 1, 0]
    assert [r["clients"] for r in rows[1:]] == [3, 3, 2, 3]
    redo = [m for m in grid.sent if m.metadata.dst_node_id == 101
            and round_config(m.content)[SERVER_ROUND] == 3
            and m.metadata.message_type == wire.EVALUATE_SEEDS][0]
    assert [r.round for r in wire.unpack_history(redo.content[wire.ZO_HISTORY])] == [1, 2, 3]
    server = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    for node in (100, 101, 102):
        replica, synced = zo_handler.held_replica(grid.contexts[node])  # type: ignore[misc]
        assert synced == 5 and all(torch.equal(replica[k], v) for k, v in server.items())


def test_the_replica_store_keeps_two_in_memory_and_prunes_old_rounds(tmp_path: Path) -> None:
    from clients.replicas import ReplicaStore

    store = ReplicaStore(root=tmp_path)
    for t in range(1, 6):
        store.put("run", t, f"k{t}", {"w": torch.full((3,), float(t))})
    assert list(store._cache) == ["k4", "k5"]
    assert store.memory_bytes() == 2 * 3 * 4
    assert torch.equal(store.get("run", 2, "k2")["w"], torch.full((3,), 2.0))  # type: ignore[index]
    assert store.prune("run", 4) == 3
    assert store.get("run", 3, "k3") is None and store.get("run", 5, "k5") is not None
    assert sorted(p.name[:9] for p in (tmp_path / "run").glob("*.pt")) == ["000000004", "000000005"]


def test_the_replica_store_keeps_at_most_on_disk_rounds_on_disk(tmp_path: Path) -> None:
    from clients.replicas import ON_DISK, ReplicaStore

    store = ReplicaStore(root=tmp_path)
    for t in range(1, ON_DISK + 6):
        store.put("run", t, f"k{t}", {"w": torch.zeros(1)})
    kept = sorted(int(p.name[:9]) for p in (tmp_path / "run").glob("*.pt"))
    assert kept == list(range(6, ON_DISK + 6))  # the newest ON_DISK rounds
