"""The columns and dataset metadata of a manifest, assembled from a data set, statistics and a selection.

Shared by ``pracset build`` and PrAC-IMP's per-round sets, so both write the same schema; and a pipeline's
random subset, drawn from a built manifest's statistics.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from pracset.data.base import HASH_FORM_FLOAT, hash_form
from pracset.errors import FloatHashesWarning
from pracset.manifest.schema import read_manifest, write_manifest
from pracset.selection import SelectionConfig, SelectionInputs, select

log = logging.getLogger(__name__)


def manifest_columns(dataset, statistics, disagreements: np.ndarray | None, chosen) -> dict:
    """A manifest's columns: one row per training example, its statistics, its CEP count and the selection."""
    n = len(dataset.train)
    return {
        "example_id": np.arange(n, dtype=np.int64),
        "content_hash": dataset.train_hashes,
        "label": _labels(dataset.train.labels),
        **statistics.columns(),
        "cep_disagreements": disagreements if disagreements is not None else np.zeros(n, dtype=np.int32),
        "score": chosen.scores,
        "selected": chosen.selected,
        "reason": chosen.reasons,
    }


def _labels(labels) -> np.ndarray:
    """Host int64 labels, from a device tensor (in memory) or a NumPy array (streamed)."""
    return labels.cpu().numpy() if hasattr(labels, "cpu") else np.asarray(labels, dtype=np.int64)


def dataset_metadata(dataset) -> dict:
    """The ``dataset`` table of a manifest's metadata (what a reader checks the data against).

    ``hash_form`` records what the content hashes were taken of (see
    :func:`pracset.data.base.hash_form`); a manifest of float inputs is warned
    about as it is made (:func:`warn_float_hashes`).
    """
    form = hash_form(dataset.train)
    if form == HASH_FORM_FLOAT and dataset.train.images.dim() == 4:  # images: a uint8 copy exists somewhere
        warn_float_hashes(dataset)
    return {"name": dataset.name, "split": "train", "size": len(dataset.train), "fingerprint": dataset.fingerprint,
            "class_names": list(dataset.class_names), **dataset.describe(), "hash_form": form}


def warn_float_hashes(dataset) -> None:
    """Say (log and :class:`~pracset.errors.FloatHashesWarning`) that a manifest of ``dataset``'s float inputs
    cannot be matched by content to the images stored as uint8."""
    message = (f"{dataset.name}: the training inputs are {str(dataset.train.images.dtype).replace('torch.', '')} "
               "tensors, not uint8 pixels, so the manifest's content hashes are taken of float tensors (e.g. after "
               "Normalize) and cannot match uint8 images (a Hugging Face copy, image files): load_subset and "
               "save_hf_dataset will need match='id' (same order); to match by content, build the manifest from "
               "the uint8 images (from_torch takes uint8 (N, C, H, W) pixels and normalises them itself)")
    log.warning(message)
    warnings.warn(message, FloatHashesWarning, stacklevel=3)


def write_selected_manifest(manifest_path: Path, out: Path, selection: SelectionConfig) -> None:
    """A manifest of ``manifest_path``'s examples and statistics (every column, the scores it holds included),
    selected again with ``selection``; its provenance says what it was derived from."""
    m = read_manifest(manifest_path)
    columns = {name: m.column(name) for name in m.table.column_names}
    chosen = select(SelectionInputs.from_manifest(m), selection)
    columns.update(score=chosen.scores, selected=chosen.selected, reason=chosen.reasons)
    metadata = dict(m.metadata)
    metadata["selection"] = chosen.describe()
    metadata["provenance"] = {**m.provenance, "derived_from": str(manifest_path)}
    write_manifest(out, columns, metadata)


def write_random_manifest(manifest_path: Path, out: Path, seed: int, size: int) -> None:
    """A manifest of a seeded random subset of ``size`` examples, with the statistics of ``manifest_path``."""
    write_selected_manifest(manifest_path, out, SelectionConfig(rule="random", size=size, random_seed=seed))