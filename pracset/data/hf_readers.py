"""Readers of Hugging Face ``datasets`` splits, shared by the in-memory sources and the streaming data sets.

:func:`load_hf_splits` opens a DatasetDict, :func:`open_hf_split` finds a split's image and label columns
and returns an :class:`HFReader` over its rows with the labels and class names. An image a row names by
path is a stranger's file: read only as a regular file, never through a link, its size checked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pracset.data.readers import MAX_CLASSES, read_image_file
from pracset.errors import DataError


def load_hf_splits(target: str, train_split: str, test_split: str):
    """The ``datasets.DatasetDict`` at ``target`` (a ``save_to_disk`` directory, else a hub name) with both splits."""
    import datasets  # optional dependency: only the hf data set needs it

    try:
        loaded = datasets.load_from_disk(target) if Path(target).exists() else datasets.load_dataset(target)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        raise DataError(f"cannot load Hugging Face dataset {target!r}: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{target} is a single split; save a DatasetDict with {train_split!r} and {test_split!r} splits")
    for split in (train_split, test_split):
        if split not in loaded:
            raise DataError(f"{target} has no split {split!r}; it has {', '.join(loaded)}")
    return loaded


def _blob(row: dict) -> bytes:
    if row.get("bytes") is not None:
        return row["bytes"]
    return read_image_file(row["path"], follow_symlinks=False)  # a stranger's path: a link could point anywhere


class HFReader:
    """Reads rows of a ``datasets`` split's image column: encoded bytes (``kind="encoded"``) or arrays (``"array"``)."""

    def __init__(self, split, column: str, kind: str):
        self.split = split
        self.column = column
        self.kind = kind

    def read_many(self, ids: Sequence[int]) -> list:
        """The images of rows ``ids``, in that order."""
        if len(ids) == 0:
            return []
        rows = self.split[[int(i) for i in ids]][self.column]
        if self.kind == "array":
            return [np.asarray(r) for r in rows]
        return [_blob(r) for r in rows]

    def read_all(self):
        """Every row's image: a list of encoded images, or one array of the whole column."""
        column = self.split[self.column]
        return column if self.kind == "array" else [_blob(r) for r in column]

    def describe(self, i: int) -> str:
        """Where row ``i`` comes from, for error messages."""
        return f"row {i} of column {self.column!r}"

    def signature(self, times: bool = True) -> str:
        """The split's own ``datasets`` fingerprint (it changes with every edit) and the image column."""
        fingerprint = getattr(self.split, "_fingerprint", None)
        return None if fingerprint is None else f"hf:{fingerprint}:{len(self.split)}:{self.column}"


def open_hf_split(split, image_column: str | None, label_column: str | None,
                  what: str) -> tuple[HFReader, np.ndarray, list[str]]:
    """A reader of a ``datasets.Dataset``'s images, its int64 labels and its class names.

    Without ``image_column``: the first Image feature, else ``image``, ``img``
    or ``pixel_values``. Without ``label_column``: the first ClassLabel
    feature, else ``label``. Class names are the ClassLabel's, else ``"0"``
    up to the largest label.
    """
    import datasets  # optional dependency: only the hf data set needs it

    features = split.features
    if image_column is None:
        image_column = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
        image_column = image_column or next((k for k in ("image", "img", "pixel_values") if k in features), None)
    if label_column is None:
        label_column = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        label_column = label_column or ("label" if "label" in features else None)
    if image_column is None or label_column is None or image_column not in features or label_column not in features:
        raise DataError(f"{what}: cannot find the image/label columns among {sorted(features)}; "
                        "pass --image-column and --label-column")
    raw = np.asarray(split[label_column])
    if raw.ndim != 1 or not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.bool_)):
        raise DataError(f"{what}: labels in column {label_column!r} must be integers (class indices), got "
                        f"{raw.dtype} values; map them to a ClassLabel first")
    labels = raw.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise DataError(f"{what}: labels in column {label_column!r} must not be negative, got {int(labels.min())}")
    if len(labels) == 0:
        raise DataError(f"{what}: the split is empty")
    if isinstance(features[image_column], datasets.Image):
        reader = HFReader(split.cast_column(image_column, datasets.Image(decode=False)), image_column, "encoded")
    else:
        reader = HFReader(split.with_format("numpy"), image_column, "array")
    label_feature = features[label_column]
    if not isinstance(label_feature, datasets.ClassLabel) and labels.max() >= MAX_CLASSES:  # before "0".."N" is built
        raise DataError(f"{what}: labels in column {label_column!r} go up to {int(labels.max())}; without class "
                        f"names (a ClassLabel feature) labels must be below {MAX_CLASSES}")
    classes = (list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel)
               else [str(c) for c in range(int(labels.max()) + 1)])
    return reader, labels, classes  # labels past the classes: refused by the caller (sources.check_labels)
