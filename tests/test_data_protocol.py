"""The in-memory and the streaming data sets and loaders offer the same members (pracset.data.protocol)."""

from __future__ import annotations

import dataclasses
import inspect
from functools import cached_property

import numpy as np
import pytest
import torch
from test_streaming import save_as_hf, write_tree

from pracset.data import DataConfig, DeviceLoader, ImageDataset, load_dataset
from pracset.data.protocol import BatchLoader, LabelledSplit, SplitDataset
from pracset.data.streaming import StreamingLoader, StreamingSplits, hf_splits, image_folder_splits


def _members(protocol: type) -> set[str]:
    """The names a protocol declares: its annotated attributes, properties and methods."""
    declared = set(vars(protocol).get("__annotations__", {}))
    declared |= {name for name, value in vars(protocol).items()
                 if (not name.startswith("_") or name in ("__len__", "__iter__"))
                 and (callable(value) or isinstance(value, property))}
    return declared


def _kind(cls: type, name: str) -> str:
    """How ``cls`` offers ``name``: a plain attribute (field), a property (cached or not) or a method."""
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return "attribute"
    try:
        value = inspect.getattr_static(cls, name)
    except AttributeError:
        return "attribute"  # set in __init__
    if isinstance(value, (property, cached_property)):
        return "property"
    return "method" if callable(value) else "attribute"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("protocol") / "images")


@pytest.fixture(scope="module")
def pair(tree) -> tuple[ImageDataset, StreamingSplits]:
    streamed = image_folder_splits(tree)
    streamed.workers = 0
    return load_dataset(DataConfig("imagefolder", data_dir=str(tree))), streamed


def test_protocols_declare_what_the_training_code_reads():
    assert {"name", "train", "test", "class_names", "num_classes", "channels", "image_size", "normalization",
            "train_hashes", "fingerprint", "describe", "id_order", "default_crop_padding", "default_flip",
            "source"} <= _members(SplitDataset)
    assert {"ids", "split", "device", "batch_size", "num_examples", "set_epoch", "sharded", "__len__",
            "__iter__"} <= _members(BatchLoader)


def test_both_data_sets_implement_the_protocol_with_the_same_kinds(pair):
    in_memory, streamed = pair
    assert isinstance(in_memory, SplitDataset) and isinstance(streamed, SplitDataset)
    for split in (in_memory.train, in_memory.test, streamed.train, streamed.test):
        assert isinstance(split, LabelledSplit)
    for name in _members(SplitDataset):
        assert _kind(ImageDataset, name) == _kind(StreamingSplits, name), name
    assert _kind(StreamingSplits, "fingerprint") == "property"  # read as data.fingerprint on both
    assert not isinstance(object(), SplitDataset)


def test_both_data_sets_agree_on_the_same_files(pair):
    in_memory, streamed = pair
    assert isinstance(streamed.fingerprint, str) and streamed.fingerprint == in_memory.fingerprint
    np.testing.assert_array_equal(streamed.train_hashes, in_memory.train_hashes)
    assert streamed.describe() == in_memory.describe()
    assert streamed.describe()["id_order"] == in_memory.id_order != ""
    assert (streamed.name, streamed.class_names, streamed.num_classes) == \
           (in_memory.name, in_memory.class_names, in_memory.num_classes)
    assert (streamed.channels, streamed.image_size) == (in_memory.channels, in_memory.image_size) == (3, (10, 12))
    assert streamed.normalization == in_memory.normalization
    assert (streamed.default_crop_padding, streamed.default_flip) == \
           (in_memory.default_crop_padding, in_memory.default_flip)
    assert streamed.source == in_memory.source


def test_both_loaders_implement_the_protocol_with_the_same_kinds(pair):
    in_memory, streamed = pair
    mean, std = in_memory.normalization
    device_loader = DeviceLoader(in_memory.train, 4, mean, std, ids=[1, 2, 3], shuffle=True, seed=3)
    stream_loader = StreamingLoader(streamed.train, 4, mean, std, ids=[1, 2, 3], shuffle=True, seed=3, workers=0)
    assert isinstance(device_loader, BatchLoader) and isinstance(stream_loader, BatchLoader)
    for name in _members(BatchLoader):
        assert _kind(DeviceLoader, name) == _kind(StreamingLoader, name), name
    for name in ("num_examples", "batch_size", "shuffle", "crop_padding", "flip", "drop_last", "seed", "epoch",
                 "channels_last", "sharded", "device"):
        assert getattr(device_loader, name) == getattr(stream_loader, name), name
    assert len(device_loader) == len(stream_loader)
    assert torch.equal(device_loader.ids, stream_loader.ids)
    assert torch.equal(device_loader.split.labels, stream_loader.split.labels)
    assert not isinstance(object(), BatchLoader)


def test_hugging_face_data_sets_agree_too(tmp_path, tree):
    save_as_hf(tree, tmp_path / "hf")
    in_memory = load_dataset(DataConfig("hf", data_dir=str(tmp_path / "hf")))
    streamed = hf_splits(str(tmp_path / "hf"))
    streamed.workers = 0
    assert isinstance(streamed, SplitDataset)
    assert streamed.describe() == in_memory.describe()
    assert streamed.fingerprint == in_memory.fingerprint
