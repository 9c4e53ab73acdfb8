"""Load a data set by its :class:`DataConfig`: in memory from its source, or streamed.

The sources themselves (:class:`DataSource` and a subclass per source, the
``SOURCES`` registry, :class:`DataConfig`) live in :mod:`pracset.data.catalog`
and are re-exported here; the streamed path (:mod:`pracset.data.streaming`)
builds on them, and :func:`load_dataset` sits above both.
"""

from __future__ import annotations

from pracset.data.base import ImageDataset
from pracset.data.catalog import (DATA_DIR_ENV, SOURCES, CifarSource, DataConfig, DataSource,  # noqa: F401
                                  DigitsSource, HuggingFaceSource, IdxSource, ImageFolderSource, check_labels,
                                  hf_split_arrays, read_idx)
from pracset.data.streaming import StreamingSplits, open_streaming


def load_dataset(config: DataConfig) -> ImageDataset | StreamingSplits:
    """Load the data set that ``config`` names: in memory (an :class:`ImageDataset`), or streamed with ``stream``
    (a :class:`~pracset.data.streaming.StreamingSplits`; both are a :class:`~pracset.data.protocol.SplitDataset`)."""
    source = SOURCES.get(config.name)
    if config.stream:
        return open_streaming(config)
    return source.load(config)


__all__ = ["DATA_DIR_ENV", "SOURCES", "CifarSource", "DataConfig", "DataSource", "DigitsSource", "HuggingFaceSource",
           "IdxSource", "ImageFolderSource", "check_labels", "hf_split_arrays", "load_dataset", "read_idx"]
