"""Load a data set by its :class:`DataConfig`: in memory from its source, or streamed.

The sources themselves (:class:`DataSource` and a subclass per source, the
``SOURCES`` registry, :class:`DataConfig`) live in :mod:`pracset.data.catalog`
and are re-exported here; the streamed path (:mod:`pracset.data.streaming`)
builds on them, and :func:`load_dataset` sits above both.
"""

from __future__ import annotations

import logging

import torch

from pracset.data.base import ImageDataset, ImageSplit
from pracset.data.catalog import (DATA_DIR_ENV, SOURCES, CifarSource, DataConfig, DataSource,  # noqa: F401
                                  DigitsSource, HuggingFaceSource, IdxSource, ImageFolderSource, check_labels,
                                  hf_split_arrays, read_idx)
from pracset.data.streaming import StreamingSplits, open_streaming
from pracset.errors import ConfigError

log = logging.getLogger(__name__)


def load_dataset(config: DataConfig) -> ImageDataset | StreamingSplits:
    """Load the data set that ``config`` names: in memory (an :class:`ImageDataset`), or streamed with ``stream``
    (a :class:`~pracset.data.streaming.StreamingSplits`; both are a :class:`~pracset.data.protocol.SplitDataset`)."""
    source = SOURCES.get(config.name)
    if config.stream:
        return open_streaming(config)
    dataset = source.load(config)
    return limited(dataset, config.limit, config.limit_seed) if config.limit is not None else dataset


def limited(dataset: ImageDataset, limit: int, seed: int | None = None) -> ImageDataset:
    """``dataset`` with only ``limit`` of its training examples (a quick trial): the first ``limit``, or (``seed``)
    ``limit`` drawn uniformly at random, kept in their canonical order; they are renumbered 0..limit-1, so its
    fingerprint (and a manifest built on it) is the trial's own. The test split is unchanged."""
    total = len(dataset.train)
    if limit > total:
        raise ConfigError(f"limit {limit} is more than the {total} training examples of {dataset.name}")
    if seed is None:
        ids = torch.arange(limit)
        how = f"the first {limit}"
    else:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randperm(total, generator=generator)[:limit].sort().values
        how = f"{limit} drawn at random with seed {seed}"
    log.info("%s: a trial on %s of its %d training examples", dataset.name, how, total)
    return dataset.replace(train=ImageSplit(dataset.train.images[ids], dataset.train.labels[ids]),
                           id_order=f"{how} training examples of: {dataset.id_order}; example_id = position among them",
                           source={**dataset.source, "limit": limit, "limit_seed": seed})


__all__ = ["DATA_DIR_ENV", "SOURCES", "CifarSource", "DataConfig", "DataSource", "DigitsSource", "HuggingFaceSource",
           "IdxSource", "ImageFolderSource", "check_labels", "hf_split_arrays", "limited", "load_dataset", "read_idx"]
