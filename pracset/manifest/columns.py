"""The manifest's columns, metadata keys and error type (documented column by column in ``manifests/README.md``)."""

from __future__ import annotations

import pyarrow as pa

from pracset.errors import PracsetError

SCHEMA_VERSION = 1
METADATA_KEY = b"pracset"
COMPRESSION = "zstd"

#: The required columns, in file order, with their Parquet/Arrow types.
COLUMNS: dict[str, pa.DataType] = {
    "example_id": pa.int64(),
    "content_hash": pa.string(),
    "label": pa.int64(),
    "forgetting_events": pa.int32(),
    "presentations": pa.int32(),
    "times_correct": pa.int32(),
    "first_learned_epoch": pa.int32(),
    "never_learned": pa.bool_(),
    "last_correct": pa.bool_(),
    "last_loss": pa.float32(),
    "margin": pa.float32(),
    "cep_disagreements": pa.int32(),
    "score": pa.float64(),
    "selected": pa.bool_(),
    "reason": pa.string(),
}
SCHEMA = pa.schema(list(COLUMNS.items()))

#: The values ``reason`` may take on a selected row ("" on every other row).
REASONS: tuple[str, ...] = ("cet", "cep", "both", "random", "topk", "balance")

#: Keys the ``pracset`` metadata must hold (the writer adds ``schema_version``).
REQUIRED_METADATA: dict[str, tuple[str, ...]] = {
    "dataset": ("name", "split", "size", "fingerprint"),
    "selection": ("rule",),
    "provenance": (),
}

class ManifestError(PracsetError):
    """A manifest file is missing, unreadable, invalid, or for another data set."""
