"""The Hugging Face round trip (issue 25, item 5): the saved subset keeps each row's example_id, score and
reason; the card names the classes and shows the selection settings as a table; a manifest built at another
image size is refused naming both sizes. Expected values are read from the Parquet file with pyarrow, not
through pracset's Manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pracset.errors import ConfigError
from pracset.manifest import ManifestError
from pracset.interop import save_hf_dataset
from pracset.manifest import read_manifest

SHIPPED = Path(__file__).resolve().parents[1] / "manifests" / "digits-mlp.parquet"


def _hf_digits(extra: dict | None = None):
    """The README's Hugging Face copy of pracset's digits training split (uint8 pixels, in example_id order)."""
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = np.arange(len(digits.target)) % 5 != 4
    columns = {"pixels": np.rint(digits.images[train] * 255 / 16).astype(np.uint8), "label": digits.target[train]}
    features = {"pixels": datasets.Array2D((8, 8), "uint8"), "label": datasets.Value("int64")}
    for name, values in (extra or {}).items():
        columns[name], features[name] = values, datasets.Value("float64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _selected_rows():
    table = pq.read_table(SHIPPED).to_pydict()
    keep = [i for i, s in enumerate(table["selected"]) if s]
    return {name: [table[name][i] for i in keep] for name in ("example_id", "score", "reason", "label")}


def test_the_saved_subset_keeps_example_id_score_and_reason(tmp_path):
    import datasets

    out = save_hf_dataset(SHIPPED, _hf_digits(), tmp_path / "out", image_column="pixels")
    loaded = datasets.load_from_disk(str(out))
    expected = _selected_rows()
    assert len(loaded) == len(expected["example_id"]) == 129
    for name in ("example_id", "score", "reason", "label"):
        assert loaded[name] == expected[name], name
    assert set(loaded["reason"]) <= {"cet", "cep", "both"}


def test_the_card_names_the_classes_and_tabulates_the_settings(tmp_path):
    out = save_hf_dataset(SHIPPED, _hf_digits(), tmp_path / "out", image_column="pixels")
    card = (out / "README.md").read_text()
    expected = _selected_rows()
    table = pq.read_table(SHIPPED).to_pydict()
    kept_zero = expected["label"].count(0)
    all_zero = table["label"].count(0)
    assert f"| 0 | 0 | {kept_zero} | {all_zero} |" in card  # label, class name, kept, of
    assert "| label | class | kept | of |" in card
    assert "| setting | value |" in card and "| never_learned | keep |" in card and "| size | none |" in card
    assert '{"' not in card  # no raw JSON of the settings


def test_a_column_the_dataset_already_has_is_refused_and_can_be_left_out(tmp_path):
    import datasets

    scored = _hf_digits({"score": np.zeros(1438)})
    with pytest.raises(ConfigError, match=r"^the dataset already has a column 'score'; choose another score_column "
                                          r"\(or None to leave it out\)$"):
        save_hf_dataset(SHIPPED, scored, tmp_path / "a", image_column="pixels")
    assert not (tmp_path / "a").exists()
    out = save_hf_dataset(SHIPPED, scored, tmp_path / "b", image_column="pixels", score_column="pracset_score",
                          reason_column=None, id_column=None)
    loaded = datasets.load_from_disk(str(out))
    assert loaded["pracset_score"] == _selected_rows()["score"]
    assert "reason" not in loaded.column_names and "example_id" not in loaded.column_names


def test_a_manifest_built_at_another_image_size_names_both_sizes():
    meta = read_manifest(SHIPPED).dataset
    assert meta["image_size"] == [8, 8]
    with pytest.raises(ManifestError, match=r"was built from 8x8 images of digits, and this data set's are 16x16: "
                                            r"load it at --image-size 8 \(image_size=8 in Python\), or build a "
                                            "manifest at this size$"):
        read_manifest(SHIPPED, fingerprint="0" * 32, dataset_name="digits", image_size=(16, 16))
    with pytest.raises(ManifestError, match=r"with fingerprint 94ba05bbc311\.\.\., not this one"):  # same size: another
        read_manifest(SHIPPED, fingerprint="0" * 32, dataset_name="digits", image_size=(8, 8))
