"""The columns and dataset metadata of a manifest, assembled from a data set, statistics and a selection.

Shared by ``pracset build`` and PrAC-IMP's per-round sets, so both write the same schema.
"""

from __future__ import annotations

import numpy as np


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
