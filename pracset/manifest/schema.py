"""The manifest file: schema, validated Parquet writer and reader, :class:`Manifest`.

A manifest is a Parquet file with one row per training example (kept and
removed alike), sorted by ``example_id``, and a JSON document under the
Parquet key-value metadata key ``pracset`` that says what the file is (schema
version, data set, selection rule, provenance). ``manifests/README.md``
documents every column.

The reader and the writer run the same checks; the writer raises
:class:`~pracset.errors.ConfigError` (the caller handed it bad columns), the
reader :class:`ManifestError` (the file is bad or belongs to another data set).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pracset.errors import ConfigError
from pracset.files import require_regular_file
from pracset.fingerprints import fingerprint as compute_fingerprint
from pracset.manifest.columns import (  # noqa: F401  (REASONS, REQUIRED_METADATA, SCHEMA: re-exported)
    COLUMNS, COMPRESSION, METADATA_KEY, REASONS, REQUIRED_METADATA, SCHEMA, SCHEMA_VERSION, ManifestError,
)
from pracset.manifest.validate import validate_table

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- writer
def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _json_ready(meta: Mapping) -> dict:
    """``meta`` as it will read back from JSON (numpy scalars to numbers, tuples to lists)."""
    try:
        return json.loads(json.dumps(meta, default=_json_default, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"manifest metadata cannot be stored as JSON: {exc}") from None


def build_table(columns: Mapping[str, Any], metadata: Mapping) -> pa.Table:
    """The validated manifest table (with its ``pracset`` metadata) that :func:`write_manifest` writes."""
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"manifest metadata must be a dict, got {type(metadata).__name__}")
    missing = [n for n in COLUMNS if n not in columns]
    if missing:
        raise ConfigError(f"manifest: missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    unsized = [name for name, values in columns.items() if not hasattr(values, "__len__")]
    if unsized:
        raise ConfigError(f"manifest column {unsized[0]} must be a 1-D array, got {type(columns[unsized[0]]).__name__}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        expected = lengths["example_id"]
        odd = {n: k for n, k in lengths.items() if k != expected}
        raise ConfigError(f"manifest columns differ in length: example_id has {expected} rows, "
                          + ", ".join(f"{n} has {k}" for n, k in odd.items()))
    arrays = []
    names = list(COLUMNS) + [n for n in columns if n not in COLUMNS]
    for name in names:
        values = columns[name]
        try:
            array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(values))
            if name in COLUMNS and array.type != COLUMNS[name]:
                array = array.cast(COLUMNS[name], safe=True)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            target = COLUMNS.get(name, "an Arrow column")
            raise ConfigError(f"manifest column {name} cannot be stored as {target}: {str(exc).splitlines()[0]}") from None
        arrays.append(array)
    table = pa.Table.from_arrays(arrays, names=names)
    meta = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in _json_ready(metadata).items() if k != "schema_version"}}
    table = validate_table(table, meta, ConfigError, "manifest")
    text = json.dumps(meta, allow_nan=True)
    return table.replace_schema_metadata({METADATA_KEY: text.encode()})


def write_manifest(path: str | os.PathLike, columns: Mapping[str, Any], metadata: Mapping, *,
                   overwrite: bool = True) -> Path:
    """Write a manifest atomically and return its path.

    ``columns`` maps every name of :data:`COLUMNS` (extra names are kept after
    them) to a 1-D array with one value per training example; values are cast
    to the schema types (an impossible cast, a missing column or differing
    lengths raise :class:`~pracset.errors.ConfigError`), rows are sorted by
    ``example_id`` and checked as :func:`read_manifest` checks them.
    ``metadata`` must hold ``dataset`` (``name``, ``split``, ``size``,
    ``fingerprint``), ``selection`` (at least ``rule``) and ``provenance``
    dicts; it is stored as JSON under the Parquet metadata key ``pracset``
    with ``schema_version`` added. The file is written to a temporary file and
    renamed: a failed write leaves an existing ``path`` untouched. With
    ``overwrite=False`` a manifest that exists by then is never replaced
    (``FileExistsError``).
    """
    from pracset.fileio import atomic_write  # imports torch: keep `import pracset.manifest` light

    table = build_table(columns, metadata)
    # Looked up at call time (pq.write_table) so tests can make it fail mid-write.
    # Column statistics would only help predicate push-down, which nobody does on a manifest.
    out = atomic_write(path, lambda handle: pq.write_table(table, handle, compression=COMPRESSION,
                                                           write_statistics=False,
                                                           use_dictionary=["reason", "label", "selected"]),
                       overwrite=overwrite)
    log.info("wrote manifest %s: %d examples, %d selected", out, table.num_rows,
             int(pc.sum(table.column("selected")).as_py()))
    return out


# --------------------------------------------------------------------------- reader
def _open(path: Path) -> pa.Table:
    """Read the Parquet file, turning every failure into a one-line ManifestError."""
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    if path.is_dir():
        raise ManifestError(f"manifest {path} is a directory, not a Parquet file")
    try:
        require_regular_file(path, "manifest", error=ManifestError)  # a FIFO or a device would block or never end
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(max(0, size - 4))
            tail = handle.read(4)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise ManifestError(f"manifest {path} is empty (0 bytes)")
    if head != b"PAR1":
        raise ManifestError(f"manifest {path} is not a Parquet file (no PAR1 magic at its start)")
    if tail != b"PAR1" or size < 12:
        raise ManifestError(f"manifest {path} is truncated: it has no Parquet footer ({size} bytes)")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"manifest {path} is corrupt or truncated: {str(exc).splitlines()[0]}") from None


def read_manifest(path: str | os.PathLike, *, fingerprint: str | None = None,
                  dataset_name: str | None = None, image_size: Sequence[int] | None = None) -> Manifest:
    """Read and validate a manifest.

    Raises :class:`ManifestError`, with a one-line message naming the problem,
    when the file is missing, empty, truncated or not Parquet, lacks the
    ``pracset`` metadata, was written by a newer schema version, lacks a
    required column or holds one of a type that cannot be cast, has duplicate,
    missing or out-of-range example ids, an unknown ``reason``, a
    ``selected``/``reason`` disagreement, or no selected row; and when
    ``fingerprint`` or ``dataset_name`` is given and differs from the data set
    the manifest was built for (naming both image sizes when ``image_size``, the
    data's (height, width), differs from the one the manifest was built at: a
    data set loaded at another ``--image-size``). Columns are cast to the
    :data:`COLUMNS` types and rows sorted by ``example_id``; extra columns are kept.
    """
    path = Path(path)
    table = _open(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ManifestError(f"{path} is not a pracset manifest: its Parquet metadata has no 'pracset' key")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: the pracset metadata is not valid JSON ({exc})") from None
    except RecursionError:  # JSON nested without end: refuse it instead of crashing
        raise ManifestError(f"{path}: the pracset metadata is nested too deeply to be a manifest's") from None
    where = f"manifest {path}"
    table = validate_table(table, meta, ManifestError, where)
    data = meta["dataset"]
    if "class_names" in data:  # every manifest pracset writes: its header must describe its own rows
        hashes = table.column("content_hash").to_numpy(zero_copy_only=False).astype("U16")
        if compute_fingerprint(hashes, tuple(data["class_names"])) != data["fingerprint"]:
            raise ManifestError(f"{where}: its content hashes do not give the fingerprint its header claims "
                                f"({data['fingerprint'][:12]}...): the file was altered")
    if (fingerprint is not None and fingerprint != data["fingerprint"]) or (
            dataset_name is not None and dataset_name != data["name"]):
        this = " ".join(x for x in (
            dataset_name if dataset_name not in (None, data["name"]) else None,
            f"{fingerprint[:12]}..." if fingerprint is not None else None) if x)
        built_at = data.get("image_size")
        if (fingerprint is not None and image_size is not None and isinstance(built_at, list) and len(built_at) == 2
                and [int(v) for v in image_size] != built_at and dataset_name in (None, data["name"])):
            h, w = built_at
            how = (f"load it at --image-size {h} (image_size={h} in Python)" if h == w else
                   "load it at its own size (without --image-size)")
            raise ManifestError(f"{where} was built from {h}x{w} images of {data['name']}, and this data set's are "
                                f"{image_size[0]}x{image_size[1]}: {how}, or build a manifest at this size")
        raise ManifestError(f"{where} was built for data set {data['name']} with fingerprint "
                            f"{data['fingerprint'][:12]}..., not this one ({this})")
    return Manifest(path=path, table=table, metadata=meta)


# --------------------------------------------------------------------------- Manifest
@dataclass(frozen=True, eq=False)
class Manifest:
    """A validated manifest: its ``path``, Arrow ``table`` and ``metadata`` dict.

    Rows are sorted by ``example_id`` (row ``i`` is example ``i``) and cover
    the whole training split; ``selected`` marks the examples kept for
    ticket finding.
    """

    path: Path
    table: pa.Table
    metadata: dict

    @property
    def size(self) -> int:
        """Number of rows: the size of the training split."""
        return self.table.num_rows

    @cached_property
    def selected_ids(self) -> np.ndarray:
        """The example ids of the selected rows, sorted (int64)."""
        return np.flatnonzero(self.column("selected")).astype(np.int64)

    @property
    def num_selected(self) -> int:
        return int(len(self.selected_ids))

    @property
    def fraction_selected(self) -> float:
        return self.num_selected / self.size

    @property
    def dataset(self) -> dict:
        """The ``dataset`` metadata: name, split, size, fingerprint (and any extras)."""
        return self.metadata["dataset"]

    @property
    def selection(self) -> dict:
        """The ``selection`` metadata: the rule and its parameters."""
        return self.metadata["selection"]

    @property
    def provenance(self) -> dict:
        return self.metadata["provenance"]

    @property
    def schema_version(self) -> int:
        return int(self.metadata["schema_version"])

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array in example_id order; string columns as ``object`` arrays of ``str``.

        Object, not numpy ``str``: a fixed-width ``str`` array silently drops
        trailing NUL characters, and a user's extra column must read back as
        written.
        """
        if name not in self.table.column_names:
            raise ManifestError(f"manifest {self.path} has no column {name!r}; it has {', '.join(self.table.column_names)}")
        column = self.table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return column.to_numpy(zero_copy_only=False).astype(object)
        return column.to_numpy()

    def per_class_counts(self) -> dict[int, dict[str, int]]:
        """``label -> {"total": examples, "selected": kept}``, labels ascending."""
        # np.unique, not np.bincount: a bincount is as long as the largest label, and a label is only
        # validated non-negative (a hand-edited manifest with label 2**40 must not exhaust memory).
        classes, index, totals = np.unique(self.column("label"), return_inverse=True, return_counts=True)
        kept = np.bincount(index[self.column("selected")], minlength=len(classes))
        return {int(c): {"total": int(t), "selected": int(k)} for c, t, k in zip(classes, totals, kept)}

    def reason_counts(self) -> dict[str, int]:
        """How many selected rows carry each reason (only reasons that occur)."""
        reasons, counts = np.unique(self.column("reason")[self.column("selected")], return_counts=True)
        return {str(r): int(k) for r, k in zip(reasons, counts)}

    def summary(self) -> dict:
        """A JSON-ready description: data set, counts per class and reason, selection, provenance."""
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "size": self.size,
            "selected": self.num_selected,
            "fraction": self.fraction_selected,
            "per_class": {str(k): v for k, v in self.per_class_counts().items()},
            "reasons": self.reason_counts(),
            "selection": self.selection,
            "provenance": self.provenance,
        }

    def to_hf(self):
        """All rows as a ``datasets.Dataset``; the metadata is JSON in ``info.description``."""
        import datasets  # here: importing it takes most of a second, and only this method needs it

        # Drop the Parquet metadata: datasets keeps its own under b"huggingface".
        table = self.table.replace_schema_metadata(None)
        info = datasets.DatasetInfo(description=json.dumps(self.metadata, allow_nan=True))
        return datasets.Dataset(table, info=info)

    def __repr__(self) -> str:
        return (f"Manifest({str(self.path)!r}, dataset={self.dataset['name']!r}, size={self.size}, "
                f"selected={self.num_selected}, rule={self.selection.get('rule')!r})")
