"""Bad input ends in one clear line (issue 19): local data files, run names, types, checkpoints."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fedapp.config import ConfigError, load_config
from fedapp.task.data import DataError, load_server_test, read_local

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(rng: np.random.Generator, shape: tuple[int, ...] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def local(run_config: dict[str, Any], path: Path) -> Any:
    return load_config({**run_config, "data.dataset": "local", "data.path": str(path)}).data


def one_line_data_error(run_config: dict[str, Any], path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_server_test(local(run_config, path), 0)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    error = info.value  # nothing chained: Python prints no "During handling ..." traceback
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return message


def test_corrupt_parquet_is_one_line_naming_the_file(run_config: dict, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    message = one_line_data_error(run_config, path)
    assert "not a readable parquet file" in message and "accepted:" in message


def test_empty_parquet_says_it_has_no_rows(run_config: dict, tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"image": pa.array([], IMAGE_STRUCT), "label": pa.array([], pa.int64())}), path)
    assert "has no rows" in one_line_data_error(run_config, path)


def test_empty_image_folder_says_it_has_no_images(run_config: dict, tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    message = one_line_data_error(run_config, tmp_path / "imgs")
    assert "no image files" in message and "one subfolder per class" in message


def test_image_folder_with_one_class_says_so(run_config: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "imgs" / "cat" / f"{i}.png").write_bytes(png(rng))
    message = one_line_data_error(run_config, tmp_path / "imgs")
    assert "only one class" in message and "'cat'" in message


def test_parquet_written_with_plain_pyarrow_is_accepted(run_config: dict, tmp_path: Path) -> None:
    # Prepare: `image` as struct {bytes, path} (PNG bytes), plus an integer `label`, no HF metadata
    rng = np.random.default_rng(0)
    images = [png(rng, (6, 7)) for _ in range(10)]
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in images],
                             "label": pa.array([i % 3 for i in range(10)], pa.int64())}), path)
    # Execute
    arrays = read_local(str(path))
    # Assert: decoded pixel for pixel, as (N, 1, H, W) uint8
    assert arrays.x.shape == (10, 1, 6, 7) and arrays.x.dtype == np.uint8
    assert np.array_equal(arrays.x[3, 0], np.asarray(Image.open(io.BytesIO(images[3]))))
    assert arrays.y.tolist() == [i % 3 for i in range(10)]


def test_parquet_with_binary_image_column_and_path_only_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "a.png").write_bytes(png(rng))
    blob = png(rng)
    pq.write_table(pa.table({"img": [{"bytes": None, "path": "a.png"}, {"bytes": blob, "path": None}],
                             "label": [0, 1]}), tmp_path / "mixed.parquet")
    arrays = read_local(str(tmp_path / "mixed.parquet"))
    assert np.array_equal(arrays.x[0, 0], np.asarray(Image.open(tmp_path / "a.png")))
    pq.write_table(pa.table({"image": pa.array([blob, blob], pa.binary()), "label": [1, 0]}),
                   tmp_path / "binary.parquet")
    assert read_local(str(tmp_path / "binary.parquet")).x.shape == (2, 1, 8, 8)


def test_parquet_without_label_names_columns_and_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pq.write_table(pa.table({"image": [{"bytes": png(rng), "path": None}], "target": [0]}),
                   tmp_path / "nolabel.parquet")
    with pytest.raises(DataError, match=r"no integer label column.*found \['image', 'target'\].*accepted:"):
        read_local(str(tmp_path / "nolabel.parquet"))


def test_cache_miss_does_not_chain_a_file_not_found(run_config: dict, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        load_server_test(local({**run_config, "data.cache-dir": str(tmp_path / "c")}, path), 0)
    assert not isinstance(info.value.__context__, FileNotFoundError)


# --- run config: names, strict types, resume flag ------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"run-name": ".."}, "run-name = '..' is invalid: a name of dots only would write outside"),
        ({"run-name": "."}, "run-name = '.' is invalid: a name of dots only"),
        ({"num-server-rounds": "2"}, "num-server-rounds = '2' is invalid: Input should be a valid "
                                     "integer (got str; TOML quotes make a string: write "
                                     "num-server-rounds=2)"),
        ({"seed": True}, "seed = True is invalid: Input should be a valid integer (got bool)"),
        ({"zo.exact-restore": "false"}, "write zo.exact-restore=false"),
        ({"client.lr": "0.1"}, "client.lr = '0.1' is invalid"),
        ({"overwrite": "true"}, "overwrite = 'true' is invalid: Input should be a valid boolean"),
        ({"resume": "true"}, "resume = 'true' is invalid: a string is a checkpoint path; use the "
                             "boolean true (resume=true, unquoted)"),
        ({"resume": "False"}, "use the boolean true"),
    ],
)
def test_bad_types_and_names_are_one_line(run_config: dict, override: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**run_config, **override})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_ints_are_accepted_where_floats_are_expected(run_config: dict) -> None:
    cfg = load_config({**run_config, "round-timeout": 60, "client.lr": 1})
    assert cfg.round_timeout == 60.0 and cfg.client.lr == 1.0


def test_run_name_cannot_leave_output_dir(tmp_path: Path) -> None:
    from fedapp.results import run_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"run-name = 'link' resolves to .*elsewhere, outside output-dir"):
        run_dir(str(tmp_path / "out"), "link")
    with pytest.raises(ConfigError, match="outside output-dir"):
        run_dir(str(tmp_path / "out"), "..")
    assert run_dir(str(tmp_path / "out"), "a.b") == (tmp_path / "out" / "a.b").resolve()


# --- whole ServerApp runs (in process): results never lost, checkpoints safe ---------------


def serve(cfg: dict[str, Any], grid: Any = None) -> Path:
    from fedapp.harness import InProcessGrid as FakeGrid
    from flwr.app import Context, RecordDict

    from fedapp.client_app import app as client_app
    from fedapp.server_app import main

    grid = grid or FakeGrid(client_app, cfg, 2)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return Path(cfg["output-dir"]) / cfg["run-name"]


@pytest.fixture
def tiny(run_config: dict[str, Any]) -> dict[str, Any]:
    return {**run_config, "data.dataset": "digits", "data.partition": "iid",
            "num-server-rounds": 1, "server.fraction-evaluate": 0.0, "client.lr": 0.1}


def test_existing_run_is_refused_then_overwritten_whole(tiny: dict, tmp_path: Path) -> None:
    # Prepare: a finished run, plus a stale file only the old run had
    out = serve(tiny)
    first = (out / "metrics.jsonl").read_bytes()
    # Execute / Assert: the same run-name is refused, and nothing of the old run changes
    with pytest.raises(ConfigError, match=r"already holds a run \(config.json, metrics.jsonl, "
                                          r"clients.json, model.pt, selected.json, curves.png\); "
                                          r"choose another run-name, or set overwrite=true"):
        serve(tiny)
    assert (out / "metrics.jsonl").read_bytes() == first
    # overwrite=true replaces the run: every old result file is removed before new ones appear
    (out / "curves.png").write_bytes(b"stale")
    again = serve({**tiny, "overwrite": True, "num-server-rounds": 2})
    assert [r["round"] for r in json_lines(again / "metrics.jsonl")] == [0, 1, 2]
    assert (again / "curves.png").read_bytes()[:4] == b"\x89PNG"


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_result_files_get_the_mode_open_would_give(tiny: dict) -> None:
    from fedapp.results import FILE_MODE

    out = serve(tiny)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes) == {"config.json", "metrics.jsonl", "clients.json", "model.pt",
                          "selected.json", "curves.png"}
    assert set(modes.values()) == {FILE_MODE}, modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_file_mode_is_world_readable_unless_the_umask_says_otherwise(
    tmp_path: Path, umask: int, mode: int
) -> None:
    import subprocess
    import sys

    code = (f"import os; os.umask({umask}); from pathlib import Path; "
            "from fedapp.results import atomic_write_bytes; "
            f"atomic_write_bytes(Path({str(tmp_path / 'x')!r}), b'1')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    assert (tmp_path / "x").stat().st_mode & 0o777 == mode


def test_a_run_with_nothing_aggregated_fails_naming_why(tiny: dict) -> None:
    from fedapp.results import NothingAggregated

    cfg = {**tiny, "client.fault": "nan", "client.fault-partitions": "0,1"}
    with pytest.raises(NothingAggregated, match=r"no client reply was aggregated in 1 round\(s\) "
                                                r"\(0 failed-train, 2 rejected"):
        serve(cfg)
    assert (Path(cfg["output-dir"]) / cfg["run-name"] / "metrics.jsonl").exists()  # kept to inspect


def checkpoint_of(tiny: dict) -> Path:
    return serve(tiny) / "model.pt"


def resume_from(tiny: dict, path: Path) -> str:
    cfg = {**tiny, "run-name": "resumed", "num-server-rounds": 2, "resume": str(path)}
    with pytest.raises(ConfigError) as info:
        serve(cfg)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_truncated_checkpoint_is_one_line(tiny: dict, tmp_path: Path) -> None:
    good = checkpoint_of(tiny).read_bytes()
    for cut in (0, 10, len(good) // 2, len(good) - 10):
        (tmp_path / "cut.pt").write_bytes(good[:cut])
        message = resume_from(tiny, tmp_path / "cut.pt")
        assert message.startswith(f"resume: {tmp_path / 'cut.pt'} is truncated or corrupt ("), message
        assert len(message) < 200, message


def test_untrusted_checkpoint_cannot_run_code(tiny: dict, tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    torch.save({"rows": [], "format": 2, "x": Payload()}, tmp_path / "evil.pt")
    message = resume_from(tiny, tmp_path / "evil.pt")
    assert "holds objects beyond tensors and plain values" in message
    assert not marker.exists()


def test_old_format_checkpoint_is_refused(tiny: dict, tmp_path: Path) -> None:
    import torch

    saved = torch.load(checkpoint_of(tiny), weights_only=True)
    del saved["format"]
    torch.save(saved, tmp_path / "old.pt")
    assert "has checkpoint format 1, this fedzg reads format 3" in resume_from(tiny, tmp_path / "old.pt")
    saved["rng"]["numpy"] = np.random.get_state()  # format 1 pickled NumPy's state as is
    torch.save(saved, tmp_path / "numpy.pt")
    assert "older than format 3" in resume_from(tiny, tmp_path / "numpy.pt")


def test_checkpoint_loads_with_weights_only_and_resumes(tiny: dict) -> None:
    import torch

    out = serve(tiny)
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["format"] == 3 and saved["round"] == 1
    again = serve({**tiny, "num-server-rounds": 2, "resume": True})
    assert [r["round"] for r in json_lines(again / "metrics.jsonl")] == [0, 1, 2]


# --- through the real flwr CLI (slow) ------------------------------------------------------


def flwr_config(out: Path, extra: str) -> str:
    from conftest import DATA_CACHE

    return (f'output-dir="{out}" data.cache-dir="{DATA_CACHE}" num-server-rounds=1 '
            f'data.dataset="digits" data.partition="iid" server.fraction-evaluate=0.0 {extra}')


@pytest.mark.slow
def test_flwr_run_with_nothing_aggregated_ends_failed(flwr: Any, tmp_path: Path) -> None:
    extra = 'run-name="allbad" client.fault="nan" client.fault-partitions="0,1"'
    entry, log = flwr.run(flwr_config(tmp_path, extra), "num-supernodes=2 client-resources-num-cpus=1",
                          timeout=300)
    assert entry["status"] == "finished:failed", log[-3000:]
    assert "no client reply was aggregated in 1 round(s) (0 failed-train, 2 rejected" in entry["status-details"]
    assert (tmp_path / "allbad" / "metrics.jsonl").is_file()  # the results stay to be inspected


@pytest.mark.slow
def test_flwr_run_preset_with_a_default_valued_override_is_exact(flwr: Any, tmp_path: Path) -> None:
    # Flower fuses num-server-rounds=10 (its pyproject default) into the run config; only the
    # ServerApp's Run says it was submitted, so the run has 10 rounds, not the preset's 2
    extra = 'preset="smoke" num-server-rounds=10 server.fraction-train=0.5'
    entry, log = flwr.run(flwr_config(tmp_path, extra).replace("num-server-rounds=1 ", ""),
                          "num-supernodes=2 client-resources-num-cpus=1", timeout=400)
    assert entry["status"] == "finished:completed", log[-3000:]
    saved = json.loads((tmp_path / "smoke" / "config.json").read_text())["config"]
    assert saved["preset"] == "smoke" and saved["num-server-rounds"] == 10
    assert len(json_lines(tmp_path / "smoke" / "metrics.jsonl")) == 11
