"""Data sources with stable example ids, content hashes, and a device-resident loader."""

from pracset.data.base import ImageDataset, ImageSplit, content_hashes
from pracset.data.loader import Batch, DeviceLoader, num_batches
from pracset.data.sources import SOURCES, DataConfig, DataSource, load_dataset, read_idx

__all__ = [
    "Batch", "DataConfig", "DataSource", "DeviceLoader", "ImageDataset", "ImageSplit",
    "SOURCES", "content_hashes", "load_dataset", "num_batches", "read_idx",
]
