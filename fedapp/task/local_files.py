"""Local image files (``data.dataset = "local"``, a node's ``data-path``) decoded to arrays.

Accepted (:data:`LOCAL_FORMATS`): a parquet file with an image column and an
integer label column, read with pyarrow, so files written by ``datasets`` (an
``Image`` feature, stored as a struct ``{bytes, path}``) and by plain pyarrow
(that struct, or a binary column of PNG/JPEG bytes) both load; or an image folder
``<class>/<image>`` read with datasets' ``imagefolder`` builder, which needs two
or more class subfolders to produce labels. Every problem is one
:class:`LocalFileError` line naming the path, what is wrong and what is accepted.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: What ``data.path``, ``data.test-path`` and a node's ``data-path`` may point at.
LOCAL_FORMATS = (
    "accepted: a .parquet file with an image column (a datasets Image feature, a struct "
    "{bytes, path} or a binary column of PNG/JPEG bytes) and an integer 'label' column, "
    "or an image folder with one subfolder per class (at least two)"
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
LABEL_COLUMNS = ("label", "fine_label", "labels")


class LocalFileError(ValueError):
    """A local data file or folder that cannot be used; the message is one line."""


def decode_images(images: list[PILImage], where: str) -> np.ndarray:
    """PIL images (one size, any mode) -> (N, H, W) or (N, H, W, 3) uint8; grey stays grey."""
    if not images:
        raise LocalFileError(f"{where} has no rows")
    mode = "L" if images[0].mode in ("L", "1", "I", "I;16", "F") else "RGB"
    size = images[0].size
    decoded = []
    for img in images:
        if img.size != size:
            raise LocalFileError(
                f"{where}: images differ in size ({img.size} vs {size}); resize them first"
            )
        decoded.append(np.asarray(img.convert(mode), dtype=np.uint8))
    return np.stack(decoded)


def read_local_file(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W[, 3]) uint8 and labels (N,) int64 from a parquet file or image folder."""
    if p.is_dir():
        return _read_image_folder(p)
    if p.suffix == ".parquet":
        return _read_parquet(p)
    raise LocalFileError(
        f"data path {str(p)!r} is neither a .parquet file nor an image folder; {LOCAL_FORMATS}"
    )


def _read_parquet(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """A parquet file written by ``datasets`` or plain pyarrow: encoded images plus labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        first = first.removeprefix(f"Could not open Parquet input source '{p}': ")
        raise LocalFileError(
            f"{str(p)!r} is not a readable parquet file ({first}); {LOCAL_FORMATS}"
        ) from None

    def is_image(t: pa.DataType) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
            pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        )

    columns = table.column_names
    image_cols = [c for c in columns if is_image(table.schema.field(c).type)]
    label_cols = [
        c for c in LABEL_COLUMNS if c in columns and pa.types.is_integer(table.schema.field(c).type)
    ]
    if not image_cols:
        raise LocalFileError(f"{str(p)!r} has no image column (found {columns}); {LOCAL_FORMATS}")
    if not label_cols:
        raise LocalFileError(
            f"{str(p)!r} has no integer label column ({', '.join(LABEL_COLUMNS)}; "
            f"found {columns}); {LOCAL_FORMATS}"
        )
    if table.num_rows == 0:
        raise LocalFileError(f"{str(p)!r} has no rows; {LOCAL_FORMATS}")
    images = []
    for i, cell in enumerate(table.column(image_cols[0]).to_pylist()):
        blob = cell.get("bytes") if isinstance(cell, dict) else cell
        source = cell.get("path") if isinstance(cell, dict) else None
        if blob is None and not source:
            raise LocalFileError(f"{str(p)!r} row {i}: the image has neither bytes nor a path")
        try:  # datasets stores a file path instead of bytes for images it did not embed
            images.append(Image.open(io.BytesIO(blob) if blob is not None else p.parent / source))
        except (OSError, Image.UnidentifiedImageError) as exc:
            raise LocalFileError(f"{str(p)!r} row {i}: cannot decode the image ({exc})") from None
    labels = np.asarray(table.column(label_cols[0]).to_pylist(), dtype=np.int64)
    return decode_images(images, repr(str(p))), labels


def _read_image_folder(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image folder (``<class>/<image>``) read with datasets' ``imagefolder`` builder."""
    files = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise LocalFileError(f"image folder {str(p)!r} contains no image files; {LOCAL_FORMATS}")
    from datasets import Image, load_dataset

    try:
        ds = load_dataset("imagefolder", data_dir=str(p), split="train")
    except Exception as exc:  # datasets raises many unrelated types for bad folders
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise LocalFileError(
            f"image folder {str(p)!r} cannot be read ({type(exc).__name__}: {first}); "
            f"{LOCAL_FORMATS}"
        ) from None
    image_cols = [c for c, f in ds.features.items() if isinstance(f, Image)]
    label_cols = [c for c in LABEL_COLUMNS if c in ds.features]
    if not label_cols:  # imagefolder drops the label column when there is a single class
        classes = sorted({f.parent.name for f in files})
        raise LocalFileError(
            f"image folder {str(p)!r} has images of only one class ({classes[0]!r}); "
            f"{LOCAL_FORMATS}"
        )
    images = decode_images(list(ds[image_cols[0]]), f"image folder {str(p)!r}")
    return images, np.asarray(ds[label_cols[0]], dtype=np.int64)
