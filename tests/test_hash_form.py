"""What a manifest's content hashes were taken of (``dataset.hash_form``), and what that means for matching.

A manifest built through ``from_torch`` from the usual torchvision pipeline
(ToTensor + Normalize) hashes the normalised floats: no copy of the images
stored as uint8 (a Hugging Face copy, image files) can match them. Building it
warns, the manifest records ``hash_form = "float-tensor"``, and matching it by
content names that cause and the fix (``match='id'``). A manifest built from
the uint8 pixels says nothing and matches any copy, in any order.

Each build uses ``--rule random`` with a fraction, which trains nothing (fast).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from pracset.build import build_manifest
from pracset.data import DataConfig, load_dataset
from pracset.data.torch_data import from_torch
from pracset.errors import FloatHashesWarning
from pracset.interop import save_hf_dataset
from pracset.manifest import ManifestError, load_subset, read_manifest, write_manifest
from pracset.selection import SelectionConfig

N_TRAIN, N_TEST = 200, 60
FLOAT_CAUSE = ("the manifest's hashes were taken of float tensors (e.g. after Normalize) and cannot match uint8 "
               "images; pass match='id' (same order) or build the manifest from the uint8 images")


@pytest.fixture(scope="module")
def pixels():
    """Digits as uint8 (N, 1, 8, 8) pixels and labels: a training and a test part."""
    digits = load_dataset(DataConfig("digits"))
    images, labels = digits.train.images, digits.train.labels
    return (images[:N_TRAIN], labels[:N_TRAIN]), (images[N_TRAIN:N_TRAIN + N_TEST], labels[N_TRAIN:N_TRAIN + N_TEST])


class Normalized(torch.utils.data.Dataset):
    """The usual torchvision pipeline over uint8 images: ToTensor, then Normalize."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.3,), (0.35,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i, 0].numpy()), int(self.labels[i])


def hf_copy(images: torch.Tensor, labels: torch.Tensor, order=None):
    """The same images stored as uint8 in a Hugging Face dataset (optionally reordered)."""
    import datasets

    order = np.arange(len(labels)) if order is None else order
    features = datasets.Features({"pixels": datasets.Array2D((8, 8), "uint8"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"pixels": images[:, 0].numpy()[order], "label": labels.numpy()[order]},
                                      features=features)


def build(data, path):
    return build_manifest(data, "mlp", path, selection=SelectionConfig(rule="random", fraction=0.4))


@pytest.fixture(scope="module")
def float_build(pixels, tmp_path_factory):
    """A manifest built from ToTensor + Normalize floats, with the warnings and log records its build gave."""
    (train_x, train_y), (test_x, test_y) = pixels
    data = from_torch(Normalized(train_x, train_y), Normalized(test_x, test_y))
    assert data.train.images.dtype == torch.float32
    path = tmp_path_factory.mktemp("float") / "m.parquet"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("pracset")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            build(data, path)
    finally:
        logger.removeHandler(handler)
    return path, said, records


@pytest.mark.slow
def test_a_manifest_of_float_tensors_warns_and_says_so(float_build):
    path, said, records = float_build
    warned = [w for w in said if issubclass(w.category, FloatHashesWarning)]
    assert len(warned) == 1, [str(w.message) for w in said]
    text = str(warned[0].message)
    assert "float tensors (e.g. after Normalize) and cannot match uint8 images" in text
    assert "match='id'" in text and "build the manifest from the uint8 images" in text
    assert any(r.levelno == logging.WARNING and r.getMessage() == text for r in records)
    assert read_manifest(path).dataset["hash_form"] == "float-tensor"


@pytest.mark.slow
def test_a_float_manifest_is_not_found_in_uint8_images_and_the_error_says_why(float_build, pixels, tmp_path):
    path, _, _ = float_build
    (train_x, train_y), _ = pixels
    m = read_manifest(path)
    copy = hf_copy(train_x, train_y)
    for match in ("hash", "auto"):
        with pytest.raises(ManifestError) as info:
            load_subset(m, copy, match=match, image_column="pixels")
        message = str(info.value)
        assert message.startswith(f"{m.num_selected} of {m.num_selected} selected examples of manifest {path} were "
                                  "not found in the dataset")
        assert message.endswith(FLOAT_CAUSE) and "\n" not in message
    with pytest.raises(ManifestError, match="match='id' \\(same order\\)"):
        save_hf_dataset(m, copy, tmp_path / "out", image_column="pixels")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    # the fix the message names works: the same order, matched by id
    subset = load_subset(m, copy, match="id")
    np.testing.assert_array_equal(np.asarray(subset.with_format("numpy")["pixels"]),
                                  train_x[m.selected_ids, 0].numpy())
    assert len(save_hf_dataset(m, copy, tmp_path / "by-id", match="id").name) > 0


def test_a_manifest_of_uint8_pixels_says_nothing_and_matches_any_copy(pixels, tmp_path):
    (train_x, train_y), (test_x, test_y) = pixels
    data = from_torch((train_x, train_y), (test_x, test_y))
    assert data.train.images.dtype == torch.uint8
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        build(data, tmp_path / "m.parquet")
    assert not [w for w in said if issubclass(w.category, FloatHashesWarning)], [str(w.message) for w in said]
    m = read_manifest(tmp_path / "m.parquet")
    assert m.dataset["hash_form"] == "uint8-pixels"
    order = np.random.default_rng(0).permutation(len(train_y))
    subset = load_subset(m, hf_copy(train_x, train_y, order), match="hash", image_column="pixels")
    np.testing.assert_array_equal(np.asarray(subset.with_format("numpy")["pixels"]),
                                  train_x[m.selected_ids, 0].numpy())
    # a copy with other pixels is still "not the same data set", not the float cause
    with pytest.raises(ManifestError, match=r"is it the same data set, decoded to the same pixels and labels\?$"):
        load_subset(m, hf_copy(255 - train_x, train_y), match="hash", image_column="pixels")


def test_a_built_in_data_set_records_uint8_pixels(tmp_path):
    build(DataConfig("digits"), tmp_path / "d.parquet")
    assert read_manifest(tmp_path / "d.parquet").dataset["hash_form"] == "uint8-pixels"


@pytest.mark.slow
def test_an_older_manifest_without_hash_form_is_read_and_its_error_names_both_causes(float_build, pixels, tmp_path):
    path, _, _ = float_build
    (train_x, train_y), _ = pixels
    m = read_manifest(path)
    metadata = {k: v for k, v in m.metadata.items() if k != "schema_version"}
    metadata["dataset"] = {k: v for k, v in m.dataset.items() if k != "hash_form"}
    old = read_manifest(write_manifest(tmp_path / "old.parquet",
                                       {n: m.column(n) for n in m.table.column_names}, metadata))
    assert "hash_form" not in old.dataset and old.num_selected == m.num_selected
    with pytest.raises(ManifestError) as info:
        load_subset(old, hf_copy(train_x, train_y), match="hash", image_column="pixels")
    assert str(info.value).endswith("is it the same data set, decoded to the same pixels and labels? (A manifest "
                                    "built from float tensors, e.g. after Normalize, cannot match uint8 images: "
                                    "then pass match='id' (same order).)")
    assert len(load_subset(old, hf_copy(train_x, train_y), match="id")) == old.num_selected
