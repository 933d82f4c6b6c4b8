"""Bad input ends in one clear line (issue 19): local data files, run names, types, checkpoints."""

from __future__ import annotations

import io
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
