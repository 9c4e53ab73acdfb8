"""The columns and dataset metadata of a manifest, assembled from a data set, statistics and a selection.

Shared by ``pracset build`` and PrAC-IMP's per-round sets, so both write the same schema; and a pipeline's
random subset, drawn from a built manifest's statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pracset.manifest.schema import read_manifest, write_manifest
from pracset.selection import SelectionConfig, SelectionInputs, select


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
    """The ``dataset`` table of a manifest's metadata (what a reader checks the data against)."""
    return {"name": dataset.name, "split": "train", "size": len(dataset.train), "fingerprint": dataset.fingerprint,
            "class_names": list(dataset.class_names), **dataset.describe()}


def write_random_manifest(manifest_path: Path, out: Path, seed: int, size: int) -> None:
    """A manifest of a seeded random subset of ``size`` examples, with the statistics of ``manifest_path``."""
    m = read_manifest(manifest_path)
    columns = {name: m.column(name) for name in m.table.column_names}
    inputs = SelectionInputs(labels=columns["label"], forgetting_events=columns["forgetting_events"],
                             presentations=columns["presentations"], never_learned=columns["never_learned"],
                             margin=columns["margin"], cep_disagreements=columns["cep_disagreements"])
    chosen = select(inputs, SelectionConfig(rule="random", size=size, random_seed=seed))
    columns.update(score=chosen.scores, selected=chosen.selected, reason=chosen.reasons)
    metadata = dict(m.metadata)
    metadata["selection"] = chosen.describe()
    metadata["provenance"] = {**m.provenance, "derived_from": str(manifest_path)}
    write_manifest(out, columns, metadata)
