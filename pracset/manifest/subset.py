"""Select the kept examples of a manifest out of a Hugging Face dataset.

Everything heavy (numpy, pyarrow, datasets, torch, and the parts of pracset
that load them: the manifest schema, the data decoding and hashing) is
imported inside :func:`load_subset` and its helpers, so that ``from
pracset.manifest import load_subset`` (and hence ``import pracset``) costs
nothing; ``tests/test_layers.py`` lists these imports as the allowed ones.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from pracset.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets
    import numpy as np

    from pracset.manifest.schema import Manifest

log = logging.getLogger(__name__)

MATCH_MODES = ("auto", "id", "hash")

#: How many rows ``match="auto"`` hashes to confirm that row ``i`` is example ``i`` (spread evenly over the set).
ID_CHECK_SAMPLE = 64

#: The command-line flags that the data readers' messages suggest, and the load_subset arguments that replace them.
_FLAGS_AS_ARGUMENTS = {"--image-size N": "image_size=N", "--image-column": "image_column",
                       "--label-column": "label_column"}


def load_subset(manifest: "str | os.PathLike | Manifest", dataset: "datasets.Dataset", *, match: str = "auto",
                image_column: str | None = None, label_column: str | None = None,
                image_size: int | None = None) -> "datasets.Dataset":
    """The selected (kept) examples of ``manifest`` out of ``dataset``, in example_id order.

    ``manifest`` is a path (read with :func:`~pracset.manifest.read_manifest`)
    or a :class:`~pracset.manifest.Manifest`; ``dataset`` is the training split
    as a ``datasets.Dataset``. The result is ``dataset.select(indices)``: it
    holds exactly the selected examples, and ``select`` does not copy the
    images, it only adds an indices mapping over the same Arrow table (call
    ``.flatten_indices()`` on it for a contiguous copy).

    ``match`` says how rows are paired with example ids:

    - ``"id"``: row ``i`` of ``dataset`` is example ``i``; ``dataset`` must have
      exactly as many rows as the manifest, and every row's label must equal
      the manifest's ``label`` for that id (only the label column is read; no
      image is decoded). A shuffled copy is refused instead of silently giving
      other examples; a copy reordered only within classes keeps every label
      and passes, so use ``"auto"`` or ``"hash"`` when the order is in doubt.
    - ``"hash"``: the images and labels of ``dataset`` are decoded (with
      :func:`pracset.data.catalog.hf_split_arrays`: ``image_column`` and
      ``label_column`` default to its guesses) and hashed with
      :func:`pracset.data.base.content_hashes`; each selected example is found
      by its ``content_hash``, whatever the order of ``dataset`` or however many
      other rows it has. The pixels must decode to the same uint8 values and the
      labels to the same integers as when the manifest was built.
    - ``"auto"``: ``"id"`` when it is safe, otherwise ``"hash"``. Safe means
      three cheap checks all pass: ``dataset`` has as many rows as the
      manifest; every row's label equals the manifest's ``label`` for that id;
      and :data:`ID_CHECK_SAMPLE` rows spread evenly over the set (always the
      same rows, first and last included) hash to the manifest's
      ``content_hash``. A shuffled copy fails the label check, a copy re-sorted
      within classes fails the sample; either falls back to hashing every row.
      The check costs reading the label column and decoding 64 images, where
      ``"hash"`` decodes them all (tens of seconds for 60,000 images). It does
      not prove that every unsampled image is unchanged: pass
      ``match="hash"`` to verify each selected example by its content.

    ``image_size`` resizes every decoded image (bilinearly) to ``image_size`` x
    ``image_size`` before hashing, as the command line's ``--image-size`` does
    when a manifest is built; it is needed when the images differ in size, and
    must be the size the manifest was built with.

    Raises :class:`~pracset.manifest.ManifestError` when a row count or the
    labels do not fit ``"id"`` or when selected examples are not found (naming
    how many), and :class:`~pracset.errors.DataError` when the label column is
    missing or not integers, or the images cannot be decoded or differ in size
    without ``image_size``.
    """
    import datasets  # lazily: importing datasets takes most of a second

    from pracset.data.decode import MAX_IMAGE_SIZE  # with the line below: see the module docstring
    from pracset.manifest.schema import Manifest, ManifestError, read_manifest

    if match not in MATCH_MODES:
        raise ConfigError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0):
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    if image_size is not None and image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be at most {MAX_IMAGE_SIZE}, got {image_size}")
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
        disagreeing = _count_label_disagreements(dataset, label_column, manifest)
        if disagreeing:
            raise ManifestError(f"match='id': {disagreeing} of {len(dataset)} rows of the dataset have another label "
                                f"than manifest {manifest.path} gives their example_id, so the rows are not in "
                                "example_id order; use match='hash'")
        indices, mode = selected, "id"
    elif match == "auto" and _ids_match(dataset, manifest, image_column, label_column, image_size):
        indices, mode = selected, "id"
    else:
        hashes = _dataset_hashes(dataset, image_column, label_column, image_size)
        expected = _manifest_hashes(manifest)
        indices, mode = _match_hashes(hashes, expected[selected], selected, manifest, ManifestError), "hash"
    log.info("load_subset: %d of %d examples of %s selected by %s (match=%r)",
             len(indices), len(dataset), manifest.path, mode, match)
    return dataset.select(indices)


def _manifest_hashes(manifest: "Manifest") -> "np.ndarray":
    return manifest.column("content_hash").astype("U16")  # validated 16 hex characters: lossless


def _ids_match(dataset: "datasets.Dataset", manifest: "Manifest", image_column: str | None,
               label_column: str | None, image_size: int | None) -> bool:
    """Whether row ``i`` of ``dataset`` is example ``i`` of ``manifest``, by the cheap checks of ``match="auto"``."""
    import numpy as np  # see the module docstring

    if len(dataset) != manifest.size:
        log.info("load_subset: the dataset has %d rows, manifest %s %d; matching by hash",
                 len(dataset), manifest.path, manifest.size)
        return False
    disagreeing = _count_label_disagreements(dataset, label_column, manifest)
    if disagreeing:
        log.info("load_subset: %d of %d rows have another label than the manifest gives their id; matching by hash",
                 disagreeing, len(dataset))
        return False
    sample = np.unique(np.linspace(0, len(dataset) - 1, min(ID_CHECK_SAMPLE, len(dataset))).round().astype(np.int64))
    sample_hashes = _dataset_hashes(dataset.select(sample), image_column, label_column, image_size)
    differing = int((sample_hashes != _manifest_hashes(manifest)[sample]).sum())
    if differing:
        log.info("load_subset: %d of %d sampled rows differ from the manifest's content_hash for their id; "
                 "matching by hash", differing, len(sample))
        return False
    return True


def _count_label_disagreements(dataset: "datasets.Dataset", label_column: str | None, manifest: "Manifest") -> int:
    """How many rows of ``dataset`` have another label than the manifest's ``label`` for the same example_id.

    Reads the label column only. Without ``label_column`` it is the first
    ClassLabel feature, else ``label``: the rule
    :func:`pracset.data.hf_readers.open_hf_split` uses when a manifest is built.
    """
    import datasets  # see the module docstring
    import numpy as np

    if label_column is None:
        label_column = next((name for name, feature in dataset.features.items()
                             if isinstance(feature, datasets.ClassLabel)), "label")
    if label_column not in dataset.features:
        raise DataError(f"the dataset given to load_subset has no label column {label_column!r} among "
                        f"{sorted(dataset.features)}; pass label_column")
    labels = dataset.with_format("arrow")[label_column].to_numpy()  # milliseconds, where a list takes seconds
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        raise DataError(f"the dataset given to load_subset: labels in column {label_column!r} must be integers "
                        f"(class indices), got {labels.dtype} values")
    return int((labels.astype(np.int64) != manifest.column("label")).sum())


def _dataset_hashes(dataset: "datasets.Dataset", image_column: str | None, label_column: str | None,
                    image_size: int | None) -> "np.ndarray":
    import numpy as np  # with the lines below: see the module docstring
    import torch

    from pracset.data.base import content_hashes
    from pracset.data.catalog import hf_split_arrays

    try:
        images, labels, _ = hf_split_arrays(dataset, image_column, label_column, image_size,
                                            "the dataset given to load_subset")
    except DataError as exc:  # the readers name command-line flags; a Python caller passes arguments
        message = str(exc)
        for flag, argument in _FLAGS_AS_ARGUMENTS.items():
            message = message.replace(flag, argument)
        raise DataError(message) from None
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
                    + _not_found_cause(manifest))
    rows = np.empty(len(wanted), dtype=np.int64)
    rows[want_order] = order[position]
    return rows


def _not_found_cause(manifest: "Manifest") -> str:
    """Why a manifest's examples were not found by hash, from what its hashes were taken of (``hash_form``)."""
    from pracset.data.base import HASH_FORM_FLOAT, HASH_FORM_PIXELS  # see the module docstring

    form = manifest.dataset.get("hash_form")
    if form == HASH_FORM_FLOAT:
        return ("the manifest's hashes were taken of float tensors (e.g. after Normalize) and cannot match uint8 "
                "images; pass match='id' (same order) or build the manifest from the uint8 images")
    if form == HASH_FORM_PIXELS:
        return "is it the same data set, decoded to the same pixels and labels?"
    # an older manifest does not say what its hashes were taken of
    return ("is it the same data set, decoded to the same pixels and labels? (A manifest built from float tensors, "
            "e.g. after Normalize, cannot match uint8 images: then pass match='id' (same order).)")
