"""What every data set and every loader offers, whether it is held in memory or streamed.

:class:`SplitDataset` is satisfied by :class:`~pracset.data.base.ImageDataset`
(decoded in memory) and by :class:`~pracset.data.streaming.StreamingSplits`
(decoded on demand); :class:`BatchLoader` by
:class:`~pracset.data.loader.DeviceLoader` and
:class:`~pracset.data.stream_loader.StreamingLoader`. Code that trains,
records, probes or writes manifests reads only these members, so it takes
either kind; a loader yields :class:`Batch` tuples. This module sits below the
data sets and loaders that implement it and imports none of them. Both
protocols are ``runtime_checkable``; note that before Python 3.12
``isinstance`` evaluates properties, so on a streamed data set it runs the
decoding passes behind ``train_hashes`` and ``normalization`` (they are cached
afterwards).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: this module loads neither numpy nor torch
    import numpy as np
    import torch


class Batch(NamedTuple):
    """One mini-batch: normalised inputs, labels, and the examples' ids (what every :class:`BatchLoader` yields)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


@runtime_checkable
class LabelledSplit(Protocol):
    """One split: ``len(split)`` examples whose ``labels[i]`` is example ``i``'s class index.

    ``labels`` is a tensor in memory and a NumPy array when streamed; both
    index and compare the same way.
    """

    labels: Any

    def __len__(self) -> int: ...


@runtime_checkable
class SplitDataset(Protocol):
    """A labelled image data set with a training split (scored and selected) and a test split (evaluation only)."""

    name: str
    train: LabelledSplit
    test: LabelledSplit
    class_names: tuple[str, ...]
    id_order: str
    default_crop_padding: int
    default_flip: bool
    source: dict

    @property
    def num_classes(self) -> int:
        """The number of classes."""

    @property
    def channels(self) -> int:
        """Channels of every image (1 or 3)."""

    @property
    def image_size(self) -> tuple[int, int]:
        """Height and width of every image."""

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation of the training pixels in [0, 1]."""

    @property
    def train_hashes(self) -> np.ndarray:
        """Content hash of every training example, indexed by example id."""

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the training split (content and canonical order); manifests record it."""

    def describe(self) -> dict:
        """A JSON-friendly summary (no pixels)."""


@runtime_checkable
class BatchLoader(Protocol):
    """Iterates ``Batch(x, y, index)``: normalised inputs on ``device``, labels and example ids.

    ``ids`` are the example ids it serves (a subset or all), ``split.labels``
    every example's label on ``device``; ``set_epoch`` selects the epoch whose
    permutation and augmentation the next iteration draws.
    """

    ids: torch.Tensor
    split: LabelledSplit
    device: torch.device
    batch_size: int
    shuffle: bool
    crop_padding: int
    flip: bool
    drop_last: bool
    seed: int
    channels_last: bool
    epoch: int

    @property
    def num_examples(self) -> int:
        """How many examples an epoch visits (``len(ids)``)."""

    @property
    def sharded(self) -> bool:
        """Whether iterating yields only this rank's slice of each batch."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration draws."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def __iter__(self) -> Iterator[Batch]:
        """The epoch's batches."""


def describe_dataset(dataset: SplitDataset) -> dict:
    """The JSON-friendly summary both kinds of data set give from :meth:`SplitDataset.describe`."""
    return {
        "name": dataset.name,
        "train_examples": len(dataset.train),
        "test_examples": len(dataset.test),
        "num_classes": dataset.num_classes,
        "channels": dataset.channels,
        "image_size": list(dataset.image_size),
        "id_order": dataset.id_order,
        "source": dict(dataset.source),
    }
