"""Data sources with stable example ids, content hashes, and a device-resident loader.

In memory: :func:`load_dataset` gives an :class:`ImageDataset` and
:class:`DeviceLoader` iterates it. Streamed (sets too large for memory):
:mod:`pracset.data.streaming`. Both kinds are a :class:`SplitDataset` and
their loaders a :class:`BatchLoader`.
"""

from pracset.data.base import ImageDataset, ImageSplit, content_hashes
from pracset.data.loader import Batch, DeviceLoader, num_batches
from pracset.data.protocol import BatchLoader, SplitDataset
from pracset.data.sources import SOURCES, DataConfig, DataSource, load_dataset, read_idx

__all__ = [
    "Batch", "BatchLoader", "DataConfig", "DataSource", "DeviceLoader", "ImageDataset", "ImageSplit",
    "SOURCES", "SplitDataset", "content_hashes", "load_dataset", "num_batches", "read_idx",
]
