"""Streaming data: image sets that do not fit in memory, decoded by DataLoader workers.

The in-memory path (:mod:`pracset.data.catalog` + :class:`DeviceLoader`)
decodes a whole split once and keeps its uint8 pixels on the training device.
For ImageNet-size sets that does not fit; here the images stay encoded
(image files in a directory, members of an uncompressed tar, rows of a
Hugging Face ``datasets`` split) and a :class:`StreamingLoader` decodes them
batch by batch in ``torch.utils.data.DataLoader`` worker processes
(:mod:`pracset.data.stream_loader`).

Both paths list and read the files with :mod:`pracset.data.readers` and decode
them with :mod:`pracset.data.decode`, so example ``i`` is the same example
either way. :class:`StreamingSplits` is a
:class:`~pracset.data.protocol.SplitDataset` as
:class:`~pracset.data.base.ImageDataset` is (same names, same
``fingerprint``), and :class:`StreamingLoader` a
:class:`~pracset.data.protocol.BatchLoader` as
:class:`~pracset.data.loader.DeviceLoader` is, so the Trainer, the recorder,
the probe and manifests take either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from pracset.data.base import content_hashes, fingerprint
from pracset.data.cache import cached_hashes, cached_normalization
from pracset.data.decode import detect_mode
from pracset.data.protocol import describe_dataset
from pracset.data.hf_readers import load_hf_splits, open_hf_split
from pracset.data.readers import TreeReader, extract_archive, list_image_folder, open_tree
from pracset.data.catalog import SOURCES, DataConfig, ImageFolderSource, check_labels
from pracset.data.stream_loader import (ShardedBatchSampler, StreamingDataset, StreamingLoader, augment,
                                        decoded_batches)
from pracset.errors import ConfigError, DataError
from pracset.models import InputSpec

#: Sources whose splits can be streamed; the others are small and load in memory.
STREAMING_SOURCES = ("imagefolder", "tiny-imagenet", "hf")


@dataclass
class StreamingSplits:
    """A data set's two splits, streamed: what :func:`make_streaming_loaders` needs.

    ``normalization``, ``train_hashes`` and ``fingerprint`` each cost a decoding
    pass (in ``workers`` processes, None: up to 8) and are cached.
    """

    name: str
    train: StreamingDataset
    test: StreamingDataset
    class_names: tuple[str, ...]
    default_crop_padding: int = 0
    default_flip: bool = False
    source: dict = field(default_factory=dict)
    id_order: str = ""
    normalization_sample: int | None = 10_000
    workers: int | None = None

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """Channels of every image (1 or 3)."""
        return self.train.image_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """Height and width of every image."""
        return self.train.image_shape[1], self.train.image_shape[2]

    @cached_property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training pixels in [0, 1], from an evenly spaced sample.

        Over every example (equal to the in-memory value) when the split holds
        at most ``normalization_sample`` examples or that is None. Cached
        across runs (:mod:`pracset.data.cache`).
        """
        def compute():
            return estimate_normalization(self.train, self.normalization_sample, self.workers)

        key = self.train.cache_key()
        if key is None:
            return compute()
        return cached_normalization(f"{key}-{self.normalization_sample}", compute)

    @cached_property
    def train_hashes(self) -> np.ndarray:
        """Content hash of every training example, indexed by example id (equal to the in-memory dataset's).

        One decoding pass in the loader's workers, cached across runs
        (:mod:`pracset.data.cache`): a second build on the same files reads them back.
        """
        def compute():
            batches = decoded_batches(self.train, np.arange(len(self.train)), 1024, self.workers)
            return np.concatenate([content_hashes(x, y) for x, y, _ in batches])

        key = self.train.cache_key()
        return compute() if key is None else cached_hashes(key, len(self.train), compute)

    @cached_property
    def fingerprint(self) -> str:
        """Fingerprint of the training split, equal to the in-memory dataset's (manifests check it)."""
        return fingerprint(self.train_hashes, self.class_names)

    def describe(self) -> dict:
        """A JSON-friendly summary (no pixels), the in-memory dataset's for the same data."""
        return describe_dataset(self)

    def input_spec(self) -> InputSpec:
        """The :class:`~pracset.models.InputSpec` of a model for this data."""
        height, width = self.image_size
        return InputSpec(self.channels, height, width, self.num_classes)


def estimate_normalization(dataset: StreamingDataset, max_examples: int | None = 10_000,
                           workers: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (pixels in [0, 1]) over up to ``max_examples`` evenly spaced examples."""
    n = len(dataset)
    ids = np.arange(n) if max_examples is None or n <= max_examples else np.linspace(0, n - 1, max_examples).astype(np.int64)
    channels = dataset.image_shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for images, _, _ in decoded_batches(dataset, ids, 512, workers):
        pixels = images.transpose(0, 1).reshape(channels, -1).to(torch.float64) / 255.0
        total += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def _colour_mode(*splits) -> str:
    """The in-memory colour rule over both splits (``match_channels``): RGB if any image is colour."""
    return "RGB" if any(detect_mode(reader, len(labels)) == "RGB" for reader, labels in splits) else "L"


def image_folder_splits(root: str | Path, *, image_size: int | None = None, extract_to: str | Path | None = None,
                        name: str = "imagefolder") -> StreamingSplits:
    """The train and test (or val) splits of an image-folder tree, streamed, with the in-memory source's ids."""
    tree = open_tree(root, extract_to=extract_to)
    source = SOURCES.get(name) if name in SOURCES.names() else ImageFolderSource(name)
    listing = list_image_folder(tree)
    train_reader, test_reader = TreeReader(tree, listing.train_files), TreeReader(tree, listing.test_files)
    mode = _colour_mode((train_reader, listing.train_labels), (test_reader, listing.test_labels))
    train = StreamingDataset(train_reader, listing.train_labels, mode=mode, image_size=image_size,
                             what=f"{tree.root}/train")
    test = StreamingDataset(test_reader, listing.test_labels, mode=mode, image_size=image_size,
                            what=f"{tree.root}/{listing.test_split}")
    if train.image_shape != test.image_shape:
        raise DataError(f"{name}: train images are {train.image_shape} but test images are {test.image_shape}")
    return StreamingSplits(name, train, test, tuple(listing.classes), source.crop_padding, source.flip,
                           {"root": str(tree.root), "test_split": listing.test_split}, source.id_order)


def hf_splits(target: str, *, train_split: str = "train", test_split: str = "test", image_column: str | None = None,
              label_column: str | None = None, image_size: int | None = None) -> StreamingSplits:
    """A Hugging Face ``datasets`` DatasetDict (a ``save_to_disk`` directory or a hub name), streamed row by row.

    The Arrow tables stay memory-mapped; workers decode the rows of each batch.
    """
    loaded = load_hf_splits(target, train_split, test_split)
    train_reader, train_labels, classes = open_hf_split(loaded[train_split], image_column, label_column, target)
    test_reader, test_labels, _ = open_hf_split(loaded[test_split], image_column, label_column, target)
    check_labels("hf", classes, train_labels, test_labels)  # the test split's labels must be training classes
    mode = _colour_mode((train_reader, train_labels), (test_reader, test_labels))
    train = StreamingDataset(train_reader, train_labels, mode=mode, image_size=image_size, what=f"{target}/{train_split}")
    test = StreamingDataset(test_reader, test_labels, mode=mode, image_size=image_size, what=f"{target}/{test_split}")
    source = SOURCES.get("hf")
    return StreamingSplits("hf", train, test, tuple(classes), source.crop_padding, source.flip,
                           {"dataset": target, "train_split": train_split, "test_split": test_split}, source.id_order)


def open_streaming(config: DataConfig, *, extract_to: str | Path | None = None) -> StreamingSplits:
    """The streamed splits of the data set a :class:`~pracset.data.DataConfig` names (imagefolder, tiny-imagenet, hf)."""
    if config.name not in STREAMING_SOURCES:
        raise ConfigError(f"data set {config.name!r} is small and loads in memory; streaming serves "
                          f"{', '.join(STREAMING_SOURCES)}")
    if config.name == "hf":
        splits = hf_splits(config.hf_target(), train_split=config.train_split, test_split=config.test_split,
                           image_column=config.image_column, label_column=config.label_column,
                           image_size=config.image_size)
    else:
        root = config.resolved_data_dir()
        if root is None:
            raise DataError(f"{config.name} needs --data-dir naming the directory (or tar archive) that holds it")
        splits = image_folder_splits(root, image_size=config.image_size, extract_to=extract_to, name=config.name)
    splits.workers = config.workers
    return splits


def make_streaming_loaders(data: StreamingSplits, config, device: torch.device, *, ids=None, conv_net: bool = False,
                           workers: int | None = None) -> tuple[StreamingLoader, StreamingLoader]:
    """The streaming counterpart of :func:`pracset.train.run.make_loaders`: training and test loaders.

    ``workers`` defaults to the data set's own (``DataConfig.workers``).
    """
    workers = data.workers if workers is None else workers
    mean, std = data.normalization
    channels_last = conv_net and device.type == "cuda"
    crop = data.default_crop_padding if config.crop_padding is None else config.crop_padding
    flip = data.default_flip if config.flip is None else config.flip
    resized = getattr(config, "random_resized_crop", False)
    train = StreamingLoader(data.train, config.batch_size, mean, std, device=device, ids=ids, shuffle=True,
                            crop_padding=0 if resized else crop, flip=flip, drop_last=config.drop_last,
                            seed=config.seed, channels_last=channels_last, workers=workers,
                            random_resized_crop=resized)
    test = StreamingLoader(data.test, max(config.batch_size, 512), mean, std, device=device,
                           channels_last=channels_last, workers=workers)
    return train, test


__all__ = ["STREAMING_SOURCES", "ShardedBatchSampler", "StreamingDataset", "StreamingLoader", "StreamingSplits",
           "augment", "estimate_normalization", "extract_archive", "hf_splits", "image_folder_splits",
           "make_streaming_loaders", "open_streaming", "open_tree"]
