"""Select the kept examples of a manifest out of a Hugging Face dataset.

Everything heavy (numpy, pyarrow, datasets, torch) is imported inside
:func:`load_subset`, so that ``from pracset.manifest import load_subset`` (and
hence ``import pracset``) costs nothing.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets
    import numpy as np

    from pracset.manifest.schema import Manifest

log = logging.getLogger(__name__)

MATCH_MODES = ("auto", "id", "hash")


def load_subset(manifest: "str | os.PathLike | Manifest", dataset: "datasets.Dataset", *, match: str = "auto",
                image_column: str | None = None, label_column: str | None = None) -> "datasets.Dataset":
    """The selected (kept) examples of ``manifest`` out of ``dataset``, in example_id order.

    ``manifest`` is a path (read with :func:`~pracset.manifest.read_manifest`)
    or a :class:`~pracset.manifest.Manifest`; ``dataset`` is the training split
    as a ``datasets.Dataset``. The result is ``dataset.select(indices)``: it
    holds exactly the selected examples, and ``select`` does not copy the
    images, it only adds an indices mapping over the same Arrow table (call
    ``.flatten_indices()`` on it for a contiguous copy).

    ``match`` says how rows are paired with example ids:

    - ``"id"``: row ``i`` of ``dataset`` is example ``i``; ``dataset`` must have
      exactly as many rows as the manifest. Nothing is decoded.
    - ``"hash"``: the images and labels of ``dataset`` are decoded (with
      :func:`pracset.data.sources.hf_split_arrays`: ``image_column`` and
      ``label_column`` default to its guesses) and hashed with
      :func:`pracset.data.base.content_hashes`; each selected example is found
      by its ``content_hash``, whatever the order of ``dataset`` or however many
      other rows it has. The pixels must decode to the same uint8 values and the
      labels to the same integers as when the manifest was built.
    - ``"auto"``: ``"id"`` when ``dataset`` has as many rows as the manifest and
      every row's hash equals the manifest's ``content_hash`` for that id,
      otherwise ``"hash"``.

    Raises :class:`~pracset.manifest.ManifestError` when a row count does not
    fit ``"id"`` or when selected examples are not found (naming how many).
    """
    import datasets  # lazily: importing datasets takes most of a second

    from pracset.errors import ConfigError  # with the lines below: see the module docstring
    from pracset.manifest.schema import Manifest, ManifestError, read_manifest

    if match not in MATCH_MODES:
        raise ConfigError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    if isinstance(dataset, datasets.DatasetDict):
        raise ConfigError(f"load_subset needs one split, not a DatasetDict with {', '.join(dataset)}; "
                          f"pass the training split, e.g. dataset[{next(iter(dataset), 'train')!r}]")
    if not isinstance(dataset, datasets.Dataset):
        raise ConfigError(f"load_subset needs a datasets.Dataset, got {type(dataset).__name__}")

    selected = manifest.selected_ids
    if match == "id":
        if len(dataset) != manifest.size:
            raise ManifestError(f"match='id' needs a dataset with one row per example of manifest {manifest.path} "
                                f"({manifest.size} rows), this one has {len(dataset)}; use match='hash'")
        indices, mode = selected, "id"
    else:
        hashes = _dataset_hashes(dataset, image_column, label_column)
        expected = manifest.column("content_hash").astype("U16")  # validated 16 hex characters: lossless
        if match == "auto" and len(hashes) == len(expected) and bool((hashes == expected).all()):
            indices, mode = selected, "id"
        else:
            indices, mode = _match_hashes(hashes, expected[selected], selected, manifest, ManifestError), "hash"
    log.info("load_subset: %d of %d examples of %s selected by %s (match=%r)",
             len(indices), len(dataset), manifest.path, mode, match)
    return dataset.select(indices)


def _dataset_hashes(dataset: "datasets.Dataset", image_column: str | None, label_column: str | None) -> "np.ndarray":
    import numpy as np  # with the lines below: see the module docstring
    import torch

    from pracset.data.base import content_hashes
    from pracset.data.sources import hf_split_arrays

    images, labels, _ = hf_split_arrays(dataset, image_column, label_column, None, "the dataset given to load_subset")
    # torch.from_numpy wants a writable array; decoded arrays may be read-only views.
    images = np.require(images, dtype=np.uint8, requirements=["C", "W"])
    labels = np.require(labels, dtype=np.int64, requirements=["C", "W"])
    return content_hashes(torch.from_numpy(images), torch.from_numpy(labels))


def _match_hashes(hashes: "np.ndarray", wanted: "np.ndarray", wanted_ids: "np.ndarray",
                  manifest: "Manifest", error: type[Exception]) -> "np.ndarray":
    """Row of ``hashes`` for each entry of ``wanted`` (in its order).

    Identical examples share a hash: the k-th wanted copy of a hash takes the
    k-th dataset row holding it, so duplicates are matched as a multiset.
    """
    import numpy as np  # see the module docstring

    order = np.argsort(hashes, kind="stable")
    have = hashes[order]
    want_order = np.argsort(wanted, kind="stable")
    want = wanted[want_order]
    occurrence = np.arange(len(want)) - np.searchsorted(want, want, side="left")
    position = np.searchsorted(have, want, side="left") + occurrence
    found = position < len(have)
    found[found] = have[position[found]] == want[found]
    if not found.all():
        missing = np.sort(want_order[~found])
        first = int(missing[0])
        raise error(f"{len(missing)} of {len(wanted)} selected examples of manifest {manifest.path} were not found "
                    f"in the dataset (first: example_id {int(wanted_ids[first])}, content_hash {wanted[first]}); "
                    "is it the same data set, decoded to the same pixels and labels?")
    rows = np.empty(len(wanted), dtype=np.int64)
    rows[want_order] = order[position]
    return rows
